"""Chat completions through the gateway worker vs through the LiteLLM proxy, same mock, same run.

Both forward to the same mock OpenAI server on 127.0.0.1 (a fixed answer, its own
process). The gateway is loaded over NATS (``gateway.generate.request``), as services
call it; the proxy over HTTP (``/v1/chat/completions``), as its users call it. Each side
runs once with one process (``mesh worker gateway`` / ``litellm --num_workers 1``) and
once with two (two gateway workers in the queue group / ``--num_workers 2``), at the same
concurrency, and the script prints throughput, p50/p99 latency, CPU per request of the
server processes, and the ratios. With ``--bridge-url URL --token JWT`` it also loads a
running bridge's ``/api/v1/gateway/generate`` (the full HTTP path).

    make bench-gateway          # installs the `bench` extra (the proxy's dependencies)
    .venv/bin/python bench/bench_gateway.py [--seconds 10] [--concurrency 32] [--shapes 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesh.infra import NatsServer, free_port  # noqa: E402

MASTER_KEY = "sk-bench-4b1f0c9e7d2a48f6a1c3e5b7d9f0a2c4"
MESSAGES = [{"role": "user", "content": "Say hello."}]
ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Hello from the mock."},
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
}
OFFLINE = {
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "true",
    "HF_HUB_OFFLINE": "1",
}


# ---------------------------------------------------------------- the mock provider


def serve_mock(port: int) -> None:
    from aiohttp import web

    raw = json.dumps(ANSWER).encode()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=raw, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# ---------------------------------------------------------------- processes


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: int) -> float:
        cuts = statistics.quantiles(self.latencies, n=100)
        return cuts[q - 1] * 1000

    def line(self) -> str:
        return (
            f"{self.name:<34} {self.rps:8.1f} req/s   p50 {self.pct(50):7.1f} ms   "
            f"p99 {self.pct(99):7.1f} ms   server CPU "
            f"{self.cpu_s / max(1, self.requests) * 1000:5.2f}"
            f" ms/req   errors {self.errors}"
        )


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 120) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on {port}")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def _tree_cpu(procs: list[subprocess.Popen[bytes]]) -> float:
    import psutil

    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(p.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system
    return total


@contextlib.contextmanager
def gateway_workers(n: int, nats_url: str, models: Path, log: Path) -> Iterator[list]:
    env = {
        **os.environ,
        **OFFLINE,
        "NATS_URL": nats_url,
        "GATEWAY_MODELS": str(models),
        "LOG_LEVEL": "warning",
        "BENCH_KEY": "sk-bench-provider",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mesh", "worker", "gateway"],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(n)
    ]
    try:
        yield procs
    finally:
        _stop(procs)


@contextlib.contextmanager
def litellm_proxy(n: int, config: Path, log: Path) -> Iterator[tuple[list, int]]:
    exe = Path(sys.executable).parent / "litellm"
    if not exe.exists() and not shutil.which("litellm"):
        raise SystemExit("the litellm CLI is missing: make bench-gateway installs it")
    port = free_port()
    env = {**os.environ, **OFFLINE, "BENCH_KEY": "sk-bench-provider"}
    proc = subprocess.Popen(
        [str(exe), "--config", str(config), "--port", str(port), "--num_workers", str(n)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_port(port, proc, "litellm proxy")
        yield [proc], port
    finally:
        _stop([proc])


# ---------------------------------------------------------------- load


async def run_load(
    name: str,
    one: Callable[[], Awaitable[bool]],
    concurrency: int,
    seconds: float,
    cpu: Callable[[], float],
) -> Result:
    for _ in range(3):  # warm-up: connections, lazy imports, first-call paths
        await asyncio.gather(*[one() for _ in range(concurrency)])
    latencies: list[float] = []
    errors = 0
    count = 0
    cpu0 = cpu()
    start = time.perf_counter()
    end = start + seconds

    async def worker() -> None:
        nonlocal errors, count
        while (t0 := time.perf_counter()) < end:
            ok = await one()
            latencies.append(time.perf_counter() - t0)
            count += 1
            errors += 0 if ok else 1

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    elapsed = time.perf_counter() - start
    return Result(name, count, errors, elapsed, latencies, cpu() - cpu0)


async def nats_caller(nats_url: str):  # type: ignore[no-untyped-def]
    import nats

    from bus.codec import Codec
    from bus.context import new_context
    from bus.types import ERROR_CODE_HEADER

    nc = await nats.connect(nats_url)
    codec = Codec()
    body = codec.encode(
        new_context("bench", user="bench", timeout=3600).headers(),
        {"model": "bench", "messages": MESSAGES},
    )

    async def one() -> bool:
        try:
            msg = await nc.request("gateway.generate.request", body, timeout=30)
        except Exception:
            return False
        return not (msg.headers and ERROR_CODE_HEADER in msg.headers)

    return nc, one


async def wait_gateway(one: Callable[[], Awaitable[bool]], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await one():
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("the gateway worker did not answer")


def http_caller(session, url: str, token: str, payload: dict):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = json.dumps(payload).encode()

    async def one() -> bool:
        try:
            async with session.post(url, data=data, headers=headers) as resp:
                await resp.read()
                return resp.status == 200
        except Exception:
            return False

    return one


# ---------------------------------------------------------------- main


async def main(args: argparse.Namespace) -> None:
    import aiohttp

    shapes = [int(s) for s in args.shapes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    mock_port = free_port()
    mock = subprocess.Popen(
        [sys.executable, __file__, "--serve-mock", str(mock_port)], start_new_session=True
    )
    nats_server = NatsServer(work / "nats")
    results: list[Result] = []
    try:
        _wait_port(mock_port, mock, "mock server")
        nats_server.start()
        mock_url = f"http://127.0.0.1:{mock_port}/v1"
        deployment = {
            "model": "openai/gpt-4o-mini",
            "api_base": mock_url,
            "api_key": "os.environ/BENCH_KEY",
        }
        models = work / "gateway.yaml"
        models.write_text(
            json.dumps({"model_list": [{"model_name": "bench", "litellm_params": deployment}]})
        )
        proxy_config = work / "proxy.yaml"
        proxy_config.write_text(
            json.dumps(
                {
                    "model_list": [{"model_name": "bench", "litellm_params": deployment}],
                    "general_settings": {"master_key": MASTER_KEY},
                }
            )
        )
        log = work / "servers.log"
        print(
            f"mock {mock_url}; nats {nats_server.url}; concurrency {args.concurrency}; "
            f"{args.seconds:.0f} s per run; logs {log}",
            flush=True,
        )
        connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
        async with aiohttp.ClientSession(connector=connector) as session:
            for n in shapes:
                with gateway_workers(n, nats_server.url, models, log) as procs:
                    nc, one = await nats_caller(nats_server.url)
                    await wait_gateway(one)
                    await asyncio.sleep(2 if n > 1 else 0.5)  # every replica subscribed
                    name = f"gateway, {n} worker process{'es' if n > 1 else ''} (NATS)"
                    results.append(
                        await run_load(
                            name, one, args.concurrency, args.seconds, lambda p=procs: _tree_cpu(p)
                        )
                    )
                    print(results[-1].line(), flush=True)
                    await nc.drain()
                with litellm_proxy(n, proxy_config, log) as (procs, port):
                    one = http_caller(
                        session,
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                        MASTER_KEY,
                        {"model": "bench", "messages": MESSAGES},
                    )
                    await wait_gateway(one)
                    name = f"litellm proxy, --num_workers {n} (HTTP)"
                    results.append(
                        await run_load(
                            name, one, args.concurrency, args.seconds, lambda p=procs: _tree_cpu(p)
                        )
                    )
                    print(results[-1].line(), flush=True)
            if args.bridge_url:
                one = http_caller(
                    session,
                    args.bridge_url.rstrip("/") + "/api/v1/gateway/generate",
                    args.token,
                    {"model": "bench", "messages": MESSAGES},
                )
                results.append(
                    await run_load(
                        "bridge -> gateway (HTTP)", one, args.concurrency, args.seconds, lambda: 0.0
                    )
                )
                print(results[-1].line(), flush=True)
    finally:
        nats_server.stop()
        _stop([mock])
    print()
    by = {r.name: r for r in results}
    for n in shapes:
        g = next(r for r in results if r.name.startswith(f"gateway, {n} "))
        p = by[f"litellm proxy, --num_workers {n} (HTTP)"]
        print(
            f"{n} process(es) each: gateway/proxy throughput {g.rps / p.rps:.2f}x, "
            f"p99 {g.pct(99):.1f} vs {p.pct(99):.1f} ms"
        )
    p1 = by.get("litellm proxy, --num_workers 1 (HTTP)")
    if p1:
        best = max((r for r in results if r.name.startswith("gateway")), key=lambda r: r.rps)
        verdict = "OK" if best.rps >= 2 * p1.rps and best.pct(99) < p1.pct(99) else "BELOW"
        print(
            f"target (>= 2x the one-worker proxy, lower p99): best gateway {best.rps:.1f} req/s = "
            f"{best.rps / p1.rps:.2f}x, p99 {best.pct(99):.1f} vs {p1.pct(99):.1f} ms -> {verdict}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "rps": r.rps,
                        "p50_ms": r.pct(50),
                        "p99_ms": r.pct(99),
                        "cpu_ms_per_req": r.cpu_s / max(1, r.requests) * 1000,
                        "errors": r.errors,
                    }
                    for r in results
                ],
                indent=1,
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--shapes", default="1,2", help="processes per side, e.g. 1,2")
    parser.add_argument(
        "--bridge-url", help="also load a running bridge, e.g. http://127.0.0.1:8080"
    )
    parser.add_argument("--token", default="", help="a JWT for --bridge-url (mesh token)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--serve-mock", type=int, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.serve_mock:
        serve_mock(cli.serve_mock)
    else:
        asyncio.run(main(cli))
