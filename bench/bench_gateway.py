"""Chat completions through the gateway worker vs through the LiteLLM proxy, same mock, same run.

All forward to the same mock OpenAI server on 127.0.0.1 (a fixed answer, its own
process). The gateway is loaded over NATS (``gateway.generate.request``), as services
call it; the proxy over HTTP (``/v1/chat/completions``), as its users call it. For each
shape (1 process, then 2 = one per core here) it runs, at the same concurrency:

- the gateway on its fast path (direct HTTP to the OpenAI-compatible mock, the default),
- the gateway with ``GATEWAY_FAST_PATH=false`` (every call through ``litellm.acompletion``),
- the LiteLLM proxy with ``--num_workers`` equal to the gateway's processes,

and prints throughput, p50/p99 latency, the server processes' CPU per call, the load
average, and the ratios against the proxy with the same number of processes. With
``--bridge-url URL --token JWT`` it also loads a running bridge's
``/api/v1/gateway/generate`` (the full HTTP path). About 3 minutes with the defaults.

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
    def cpu_ms(self) -> float:
        """Server CPU per call, ms (every process of the server, children included)."""
        return self.cpu_s / max(1, self.requests) * 1000

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: int) -> float:
        cuts = statistics.quantiles(self.latencies, n=100)
        return cuts[q - 1] * 1000

    def line(self) -> str:
        return (
            f"{self.name:<42} {self.rps:8.1f} req/s   p50 {self.pct(50):7.1f} ms   "
            f"p99 {self.pct(99):7.1f} ms   server CPU {self.cpu_ms:5.2f} ms/call   "
            f"errors {self.errors}   load {os.getloadavg()[0]:.2f}"
        )


#: The goal (issue 15): this many times the proxy's throughput, with a lower p99.
TARGET = 5.0


def _gateway_name(n: int, path: str) -> str:
    what = "fast path" if path == "fast" else "litellm path"
    return f"gateway {what}, {n} process{'es' if n > 1 else ''} (NATS)"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min)"


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
def gateway_workers(
    n: int, nats_url: str, models: Path, log: Path, fast_path: bool = True
) -> Iterator[list]:
    env = {
        **os.environ,
        **OFFLINE,
        "NATS_URL": nats_url,
        "GATEWAY_MODELS": str(models),
        "GATEWAY_FAST_PATH": "true" if fast_path else "false",
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
        _wait_port(port, proc, "litellm proxy", timeout=300)  # ~2 min on a loaded machine
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
    from schemas import gateway

    nc = await nats.connect(nats_url)
    codec = Codec()
    body = codec.encode(
        new_context("bench", user="bench", timeout=3600).headers(),
        {"model": "bench", "messages": MESSAGES},
    )

    async def one() -> bool:
        try:
            # Raw NATS with one pre-encoded body on purpose, so the load generator stays
            # cheap; only the subject comes from the operation's declaration.
            msg = await nc.request(gateway.GENERATE.subject, body, timeout=30)
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


async def wait_idle(procs: list, timeout: float = 180) -> None:  # type: ignore[type-arg]
    """Until the server processes use under 10% of a core for 2 s (start-up done)."""
    deadline = time.monotonic() + timeout
    before = _tree_cpu(procs)
    while time.monotonic() < deadline:
        await asyncio.sleep(2.0)
        now = _tree_cpu(procs)
        if now - before < 0.2:
            return
        before = now


async def wait_replicas(nc, n: int, timeout: float = 300) -> None:  # type: ignore[no-untyped-def]
    """Until ``n`` gateway processes answer ``$SRV.PING.gateway`` (nats.micro discovery)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.PING.gateway", b"", reply=inbox)
        seen: set[bytes] = set()
        with contextlib.suppress(Exception):
            while True:
                msg = await sub.next_msg(timeout=0.5)
                seen.add(msg.data)
        await sub.unsubscribe()
        if len(seen) >= n:
            await asyncio.sleep(1.0)  # the last one's first calls (lazy imports, pool)
            return
        await asyncio.sleep(1.0)
    raise RuntimeError(f"fewer than {n} gateway processes came up")


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
    paths = [p for p in args.paths.split(",") if p in ("fast", "litellm")]
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
            f"{args.seconds:.0f} s per run; {os.cpu_count()} cores; logs {log}",
            flush=True,
        )
        print(f"load average at start: {_load()}", flush=True)
        connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
        async with aiohttp.ClientSession(connector=connector) as session:
            for n in shapes:
                for path in paths:
                    fast = path == "fast"
                    with gateway_workers(n, nats_server.url, models, log, fast) as procs:
                        nc, one = await nats_caller(nats_server.url)
                        await wait_gateway(one)
                        await wait_replicas(nc, n)  # no start-up CPU inside the measurement
                        name = _gateway_name(n, path)
                        results.append(
                            await run_load(
                                name,
                                one,
                                args.concurrency,
                                args.seconds,
                                lambda p=procs: _tree_cpu(p),
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
                    await wait_idle(procs)  # every worker process done starting
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
        if sys.exc_info()[0] is None:  # kept (with the servers' log) only when a run failed
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at end: {_load()}")
    by = {r.name: r for r in results}
    for n in shapes:
        proxy = by.get(f"litellm proxy, --num_workers {n} (HTTP)")
        if proxy is None:
            continue
        for path in paths:
            g = by.get(_gateway_name(n, path))
            if g is None:
                continue
            verdict = "OK" if g.rps >= TARGET * proxy.rps and g.pct(99) < proxy.pct(99) else "BELOW"
            print(
                f"{n} process(es) each, gateway {path:<7} vs proxy: throughput "
                f"{g.rps / proxy.rps:5.2f}x, p99 {g.pct(99):6.1f} vs {proxy.pct(99):6.1f} ms, "
                f"CPU/call {g.cpu_ms:.2f} vs {proxy.cpu_ms:.2f} ms "
                f"(target >= {TARGET:.0f}x with a lower p99: {verdict})"
            )
    for n in shapes:
        f, s = by.get(_gateway_name(n, "fast")), by.get(_gateway_name(n, "litellm"))
        if f and s:
            print(
                f"{n} process(es): CPU per call, fast path {f.cpu_ms:.2f} ms vs litellm path "
                f"{s.cpu_ms:.2f} ms; throughput {f.rps / s.rps:.2f}x"
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
                        "cpu_ms_per_req": r.cpu_ms,
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
        "--paths", default="fast,litellm", help="gateway paths to run: fast, litellm or both"
    )
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
