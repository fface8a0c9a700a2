"""HTTP → bridge → no-op worker → HTTP, against a plain Starlette endpoint, in one run.

    python bench/bench_bridge.py [--duration 10] [--connections 64] [--rounds 1]
                                 [--loadgen auto|wrk|python]

Starts embedded nats-server and Redis on loopback, a no-op worker, the bridge (JWT
authentication and Redis rate limiting on, with a quota high enough never to throttle)
and a plain Starlette app answering the same JSON, each in its own uvicorn process with
the same settings. Then it loads each endpoint for ``--duration`` seconds with 64
keep-alive connections and prints throughput, p50/p99 latency and the bridge/plain ratio.

The load generator is ``wrk`` when installed (``apt-get install -y wrk``), otherwise a
small asyncio HTTP/1.1 client in a separate process (less efficient: it competes for the
same two cores, so the absolute numbers are lower; the ratio is still comparable).
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PATH = "/api/v1/bench/noop"
BODY = json.dumps({"text": "hello", "n": 1}).encode()
WARMUP_S = 2.0
READY_TIMEOUT_S = 60.0


# -- the processes under test ----------------------------------------------------------


def _models() -> tuple[Any, Any]:
    from pydantic import BaseModel, ConfigDict, Field

    class NoopRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = Field(max_length=1000)
        n: int = 0

    class NoopResponse(BaseModel):
        text: str
        n: int

    return NoopRequest, NoopResponse


def serve_worker() -> None:
    from bus.connection import connect
    from bus.telemetry import setup_logging, setup_tracing
    from bus.worker import Endpoint, Worker
    from schemas.operations import Operation

    # Logs go to stderr; stdout carries only the "ready" line the orchestrator waits for.
    setup_logging(os.environ.get("LOG_LEVEL", "info"), "json")
    setup_tracing("bench-worker")

    request_model, response_model = _models()

    async def noop(req: Any, ctx: Any) -> Any:
        return response_model(text=req.text, n=req.n)

    async def main() -> None:
        nc = await connect(os.environ["NATS_URL"], name="bench-worker")
        worker = Worker(
            "bench",
            endpoints=[Endpoint(Operation("bench", "noop", request_model, response_model), noop)],
        )
        async with worker.serve(nc):
            print("ready", flush=True)
            await asyncio.Event().wait()

    _run(main())


def bridge_app() -> Any:
    from gateway_bridge.app import create_app
    from gateway_bridge.settings import BridgeSettings
    from schemas.routes import Route

    request_model, response_model = _models()
    from schemas.operations import Operation

    route = Route("POST", PATH, Operation("bench", "noop", request_model, response_model))
    return create_app(BridgeSettings(), (route,))


def plain_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def noop(request: Request) -> JSONResponse:
        data = await request.json()
        return JSONResponse({"text": data["text"], "n": data["n"]})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route(PATH, noop, methods=["POST"]), Route("/readyz", healthz)])


def serve_http(kind: str, port: int) -> None:
    import uvicorn

    from bus.telemetry import setup_logging, setup_tracing

    setup_logging(os.environ.get("LOG_LEVEL", "info"), "json")
    setup_tracing(f"bench-{kind}")
    app = bridge_app() if kind == "bridge" else plain_app()
    profile = os.environ.get("BENCH_PROFILE") if kind == "bridge" else None
    if profile:  # a cProfile of the bridge process, written when it stops (development aid)
        import cProfile
        import signal

        prof = cProfile.Profile()

        def dump(*_: Any) -> None:  # uvicorn re-raises SIGTERM once it has shut down
            prof.disable()
            prof.dump_stats(profile)
            os._exit(0)

        signal.signal(signal.SIGTERM, dump)
        prof.enable()
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


# -- load generators -------------------------------------------------------------------


def _wrk(url: str, headers: dict[str, str], duration: float, connections: int) -> dict[str, Any]:
    lua = "\n".join(
        [
            'wrk.method = "POST"',
            f"wrk.body = {json.dumps(BODY.decode())}",
            *(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()),
        ]
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
        script = f.name
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{int(duration)}s",
                "--latency",
                "-s",
                script,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    return _parse_wrk(out)


def _ms(text: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
    for unit in ("us", "ms", "s", "m"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def _parse_wrk(out: str) -> dict[str, Any]:
    result: dict[str, Any] = {"non_2xx": 0, "errors": 0}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["rps"] = float(words[1])
        elif len(words) == 2 and words[0] in ("50%", "99%"):
            result["p" + words[0][:-1]] = _ms(words[1])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            result["non_2xx"] = int(words[-1])
        elif line.strip().startswith("Socket errors:"):
            result["errors"] = sum(int(w.strip(",")) for w in words if w.strip(",").isdigit())
        elif "requests in" in line:
            result["requests"] = int(words[0])
    return result


def loadgen_process(url: str, headers_json: str, duration: float, connections: int) -> None:
    """``--loadgen-run``: a keep-alive HTTP/1.1 client; prints a JSON result line."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    headers = json.loads(headers_json)
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(BODY)}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    ).encode()
    request = head + BODY
    latencies: list[float] = []
    non_2xx = 0

    async def connection(stop_at: float) -> None:
        nonlocal non_2xx
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not status_line.split()[1].startswith(b"2"):
                    non_2xx += 1
        finally:
            writer.close()

    async def main() -> None:
        stop_at = time.perf_counter() + duration
        await asyncio.gather(*(connection(stop_at) for _ in range(connections)))

    started = time.perf_counter()
    _run(main())
    elapsed = time.perf_counter() - started
    latencies.sort()
    print(
        json.dumps(
            {
                "rps": len(latencies) / elapsed,
                "p50": latencies[len(latencies) // 2] * 1000,
                "p99": latencies[int(len(latencies) * 0.99)] * 1000,
                "non_2xx": non_2xx,
                "errors": 0,
                "requests": len(latencies),
            }
        )
    )


def _python_load(
    url: str, headers: dict[str, str], duration: float, connections: int
) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--loadgen-run",
            url,
            json.dumps(headers),
            str(duration),
            str(connections),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- orchestration ---------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:  # noqa: S310 - loopback
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready in {READY_TIMEOUT_S}s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate plain/bridge this many times; "
        "report the round with the median ratio (steadier on a shared machine)",
    )
    p.add_argument("--log-level", default="warning", help="servers' LOG_LEVEL (info logs access)")
    args = p.parse_args()
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    if use_wrk and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")

    from gateway_bridge.tokens import mint_token
    from mesh.infra import embedded, free_port

    secret = secrets.token_urlsafe(48)
    token = mint_token(secret, tenant="bench", user="bench", ttl=3600)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp, embedded(Path(tmp), postgres=False) as infra:
        assert infra.nats and infra.redis
        env = {
            **os.environ,
            "NATS_URL": infra.nats.url,
            "REDIS_URL": infra.redis.url,
            "JWT_SECRET": secret,
            "RATE_LIMIT_TENANT": "1000000000/60",
            "RATE_LIMIT_USER": "1000000000/60",
            "LOG_LEVEL": args.log_level,
        }
        try:
            worker = subprocess.Popen(
                [sys.executable, __file__, "--serve-worker"], env=env, stdout=subprocess.PIPE
            )
            procs.append(worker)
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != b"ready":
                raise SystemExit("the no-op worker did not start")
            ports = {"plain": free_port(), "bridge": free_port()}
            urls = {k: f"http://127.0.0.1:{v}" for k, v in ports.items()}
            for kind, port in ports.items():
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--serve-http", kind, str(port)], env=env
                )
                procs.append(proc)
                _wait_ready(urls[kind], proc)
            load = _wrk if use_wrk else _python_load
            rounds: list[dict[str, dict[str, Any]]] = []
            pids = {
                "plain": {"plain": procs[1].pid},
                "bridge": {
                    "bridge": procs[2].pid,
                    "worker": worker.pid,
                    "nats-server": infra.nats.proc.pid,  # type: ignore[union-attr]
                    "redis": infra.redis.proc.pid,  # type: ignore[union-attr]
                },
            }
            # Rounds alternate the endpoints, so a neighbour's load on a shared machine
            # weighs on both sides of a round's ratio alike.
            for _ in range(args.rounds):
                results: dict[str, dict[str, Any]] = {}
                for kind in ("plain", "bridge"):
                    load(urls[kind] + PATH, headers, WARMUP_S, args.connections)
                    before = {name: _cpu_seconds(pid) for name, pid in pids[kind].items()}
                    results[kind] = load(
                        urls[kind] + PATH, headers, args.duration, args.connections
                    )
                    requests = results[kind].get("requests") or 1
                    results[kind]["cpu_us"] = {
                        name: (_cpu_seconds(pid) - before[name]) / requests * 1e6
                        for name, pid in pids[kind].items()
                    }
                rounds.append(results)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    ratios = [r["bridge"]["rps"] / r["plain"]["rps"] for r in rounds]
    results = rounds[sorted(range(len(rounds)), key=ratios.__getitem__)[len(rounds) // 2]]
    print(
        f"load generator: {'wrk' if use_wrk else 'python asyncio client'}, "
        f"{args.connections} connections, {args.duration:.0f} s per endpoint, loopback"
    )
    if len(rounds) > 1:
        print(f"{len(rounds)} rounds; the round with the median ratio:")
    print(f"{'endpoint':<44} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    labels = {
        "plain": "plain Starlette (same JSON)",
        "bridge": "bridge → NATS → no-op worker (JWT + rate limit)",
    }
    for kind in ("plain", "bridge"):
        r = results[kind]
        print(
            f"{labels[kind]:<44} {r['rps']:>10.0f} {r.get('p50', 0):>8.2f} "
            f"{r.get('p99', 0):>8.2f} {r['non_2xx'] + r['errors']:>8}"
        )
    for kind in ("plain", "bridge"):
        spent = ", ".join(f"{k} {v:.0f}" for k, v in results[kind]["cpu_us"].items())
        print(f"CPU µs per request ({kind}): {spent}")
    ratio = results["bridge"]["rps"] / results["plain"]["rps"]
    print(f"ratio bridge/plain throughput: {ratio:.2f}x (target >= 0.30x)")
    if len(rounds) > 1:
        print("ratio per round: " + ", ".join(f"{r:.2f}x" for r in ratios))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-worker":
        serve_worker()
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-http":
        serve_http(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--loadgen-run":
        loadgen_process(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
