"""How the mesh grows with replicas: a service with 1, 2 and 4 worker processes in its
queue group, and the HTTP bridge with 1 and 2 processes behind one port, in one run.

    .venv/bin/python bench/bench_scaleout.py [--seconds 5] [--work-us 400] [--skip-bridge]

Workers: a service whose handler spends ``--work-us`` of CPU per request (a calibrated
hash loop standing in for real per-request work: decoding, scoring, rendering), loaded
by one asyncio client with 128 requests in flight. NATS spreads the requests over the
queue group; the figure is throughput and its ratio to one process. On a machine with C
cores the ratio should approach C (minus what the load generator and nats-server take)
and stay there past C processes.

Bridge: bench/bench_bridge.py's set-up (JWT, Redis rate limit, a no-op worker) with the
bridge run by uvicorn with 1 and then 2 processes on one listening socket — what
``mesh bridge --processes N`` does — loaded by the python HTTP client (64 keep-alive
connections). Throughput and ratio to one process.

Takes about 3 x (seconds + 3) + 2 x (seconds + 8) s: ~55 s with the defaults. Starts
embedded nats-server and Redis on loopback and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus.codec import Codec  # noqa: E402
from bus.context import new_context  # noqa: E402

SUBJECT = "scale.work.request"
IN_FLIGHT = 128
REPLICAS = (1, 2, 4)
BRIDGE_PROCESSES = (1, 2)


def _work(rounds: int) -> str:
    return hashlib.pbkdf2_hmac("sha256", b"mesh", b"salt", rounds).hex()


def calibrate(work_us: float) -> int:
    """pbkdf2 rounds that take about ``work_us`` µs here."""
    rounds = 1000
    started = time.perf_counter()
    for _ in range(20):
        _work(rounds)
    per_round = (time.perf_counter() - started) / 20 / rounds
    return max(1, int(work_us / 1e6 / per_round))


def serve_worker(url: str, rounds: int) -> None:
    """``--serve-worker``: one replica of the CPU-bound service."""
    import uvloop
    from pydantic import BaseModel

    from bus.telemetry import setup_logging
    from bus.worker import Endpoint, Worker
    from schemas.operations import Operation

    setup_logging("warning")

    class Job(BaseModel):
        n: int = 0

    class Done(BaseModel):
        digest: str

    async def work(req: Job, ctx: Any) -> Done:
        # Stands in for per-request CPU work small enough to stay on the loop.
        return Done(digest=_work(rounds))

    async def main() -> None:
        nc = await nats.connect(url)
        worker = Worker("scale", endpoints=[Endpoint(Operation("scale", "work", Job, Done), work)])
        async with worker.serve(nc):
            await nc.flush()
            print("ready", flush=True)
            await asyncio.Event().wait()

    uvloop.run(main())


async def load(url: str, seconds: float) -> float:
    nc = await nats.connect(url)
    body = Codec().encode(new_context("bench", user="bench", timeout=3600).headers(), {"n": 1})
    count = 0
    end = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal count
        while time.perf_counter() < end:
            await nc.request(SUBJECT, body, timeout=30)
            count += 1

    for _ in range(20):  # warm-up
        await nc.request(SUBJECT, body, timeout=30)
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - started
    await nc.close()
    return count / elapsed


def workers_scaleout(url: str, seconds: float, rounds: int) -> dict[int, float]:
    rates: dict[int, float] = {}
    for replicas in REPLICAS:
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--serve-worker", url, str(rounds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(replicas)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise SystemExit("a worker replica did not start")
            rates[replicas] = asyncio.run(load(url, seconds))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(15)
        print(
            f"  {replicas} worker process(es): {rates[replicas]:7.0f} req/s"
            f"   x{rates[replicas] / rates[1]:.2f} of one",
            flush=True,
        )
    return rates


def bridge_factory() -> Any:
    """The app of each bridge process (uvicorn imports this by name in every child)."""
    import bench_bridge as bb

    from bus.telemetry import setup_logging

    setup_logging("warning", "json")
    return bb.bridge_app()


def serve_bridge(port: int, processes: int) -> None:
    """``--serve-bridge``: bench_bridge's app under uvicorn with ``processes`` processes
    on one socket, as ``mesh bridge --processes N`` runs (gateway_bridge/server.py)."""
    import uvicorn

    uvicorn.run(
        "bench_scaleout:bridge_factory",
        factory=True,
        workers=processes,
        host="127.0.0.1",
        port=port,
        access_log=False,
        log_level="warning",
    )


def bridge_scaleout(seconds: float) -> dict[int, float]:
    import bench_bridge as bb

    from gateway_bridge.tokens import mint_token
    from mesh.infra import embedded, free_port

    secret = secrets.token_urlsafe(48)
    token = mint_token(secret, tenant="bench", user="bench", ttl=3600)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp, embedded(Path(tmp), postgres=False) as infra:
        assert infra.nats and infra.redis
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")]),
            "NATS_URL": infra.nats.url,
            "REDIS_URL": infra.redis.url,
            "JWT_SECRET": secret,
            "RATE_LIMIT_TENANT": "1000000000/60",
            "RATE_LIMIT_USER": "1000000000/60",
            "LOG_LEVEL": "warning",
        }
        worker = subprocess.Popen(
            [sys.executable, bb.__file__, "--serve-worker"], env=env, stdout=subprocess.PIPE
        )
        try:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != b"ready":
                raise SystemExit("the no-op worker did not start")
            for processes in BRIDGE_PROCESSES:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--serve-bridge", str(port), str(processes)],
                    env=env,
                )
                try:
                    bb._wait_ready(url, proc)
                    bb._python_load(url + bb.PATH, headers, bb.WARMUP_S, 64)
                    rates[processes] = bb._python_load(url + bb.PATH, headers, seconds, 64)["rps"]
                finally:
                    proc.terminate()
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                print(
                    f"  bridge with {processes} process(es): {rates[processes]:7.0f} req/s"
                    f"   x{rates[processes] / rates[1]:.2f} of one",
                    flush=True,
                )
        finally:
            worker.terminate()
            worker.wait(15)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="load per configuration")
    ap.add_argument("--work-us", type=float, default=400.0, help="CPU per request (µs)")
    ap.add_argument("--skip-bridge", action="store_true")
    args = ap.parse_args()

    from mesh.infra import NatsServer

    rounds = calibrate(args.work_us)
    load1 = os.getloadavg()[0]
    print(f"cores: {os.cpu_count()}, load average before: {load1:.2f}")
    print(f"workers: handler CPU ~{args.work_us:.0f} µs/request, {IN_FLIGHT} in flight")
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        try:
            workers_scaleout(server.url, args.seconds, rounds)
        finally:
            server.stop()
    if not args.skip_bridge:
        print("bridge (JWT + Redis rate limit → NATS → one no-op worker), python HTTP client:")
        bridge_scaleout(args.seconds)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-worker":
        serve_worker(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-bridge":
        sys.path.insert(0, str(ROOT / "bench"))
        serve_bridge(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.path.insert(0, str(ROOT / "bench"))
        main()
