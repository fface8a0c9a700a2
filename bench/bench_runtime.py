"""No-op endpoint on the worker runtime vs raw nats-py request/reply, same run.

Each server runs in its own process (as in production); this process is the load
generator: 64 requests in flight, the same envelope body for both. Prints throughput of
each, their ratio, and the runtime's latency percentiles. Target: runtime >= 0.7x raw.

    .venv/bin/python bench/bench_runtime.py [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus.codec import Codec  # noqa: E402
from bus.context import new_context  # noqa: E402

IN_FLIGHT = 64
SUBJECTS = {"raw": "raw.echo", "runtime": "bench.noop.request"}


async def serve(kind: str, url: str) -> None:
    from pydantic import BaseModel

    from bus.telemetry import setup_logging, setup_tracing
    from bus.worker import Endpoint, Worker
    from schemas.operations import Operation

    # As `mesh worker` runs it: INFO logs, a real tracer provider (spans are created).
    setup_logging("info")
    setup_tracing("bench")
    nc = await nats.connect(url)
    stop = asyncio.Event()
    if kind == "raw":

        async def echo(msg) -> None:  # type: ignore[no-untyped-def]
            await msg.respond(msg.data)

        await nc.subscribe(SUBJECTS["raw"], queue="raw", cb=echo)
        print("ready", flush=True)
        await stop.wait()
    else:

        class Empty(BaseModel):
            pass

        async def noop(req: Empty, ctx) -> Empty:  # type: ignore[no-untyped-def]
            return req

        worker = Worker(
            "bench", endpoints=[Endpoint(Operation("bench", "noop", Empty, Empty), noop)]
        )
        async with worker.serve(nc):
            print("ready", flush=True)
            await stop.wait()


async def load(url: str, subject: str, seconds: float) -> tuple[float, list[float]]:
    nc = await nats.connect(url)
    body = Codec().encode(new_context("bench", user="bench", timeout=3600).headers(), {})
    latencies: list[float] = []
    count = 0
    end = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal count
        while (now := time.perf_counter()) < end:
            await nc.request(subject, body, timeout=10)
            latencies.append(time.perf_counter() - now)
            count += 1

    for _ in range(200):  # warm-up
        await nc.request(subject, body, timeout=10)
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - started
    await nc.close()
    return count / elapsed, latencies


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--serve", choices=list(SUBJECTS))
    ap.add_argument("--url")
    args = ap.parse_args()
    if args.serve:
        # Both servers on uvloop, as `mesh worker` runs (mesh/cli.py).
        uvloop.run(serve(args.serve, args.url))
        return

    from mesh.infra import NatsServer

    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        try:
            results: dict[str, list[float]] = {k: [] for k in SUBJECTS}
            lat: dict[str, list[float]] = {k: [] for k in SUBJECTS}
            for _ in range(args.rounds):
                for kind, subject in SUBJECTS.items():
                    proc = subprocess.Popen(
                        [sys.executable, __file__, "--serve", kind, "--url", server.url],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    assert proc.stdout is not None
                    proc.stdout.readline()  # "ready"
                    try:
                        rate, latencies = asyncio.run(load(server.url, subject, args.seconds))
                    finally:
                        proc.terminate()
                        proc.wait(10)
                    results[kind].append(rate)
                    lat[kind].extend(latencies)
        finally:
            server.stop()
    raw = statistics.median(results["raw"])
    rt = statistics.median(results["runtime"])
    print(f"in flight: {IN_FLIGHT}, {args.rounds} rounds x {args.seconds:.0f}s each")
    for kind, rate in (("raw nats-py echo", raw), ("runtime no-op", rt)):
        key = "raw" if kind.startswith("raw") else "runtime"
        print(
            f"{kind:<18} {rate:>9.0f} req/s   p50 {pct(lat[key], 0.5):6.2f} ms"
            f"   p99 {pct(lat[key], 0.99):6.2f} ms"
        )
    ratio = rt / raw
    verdict = "OK" if ratio >= 0.7 else "BELOW"
    print(f"ratio runtime/raw: {ratio:.2f}x (target >= 0.70x) -> {verdict}")


if __name__ == "__main__":
    main()
