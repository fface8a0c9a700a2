"""``prompt.render`` throughput for a cached hot template against a no-op endpoint of the
same runtime, in one run.

Starts embedded NATS and Postgres (``mesh.infra.embedded``), then one worker process (the
production shape) serving the prompt worker (through its registry lifespan, as ``mesh
worker prompt`` runs it) and a trivial worker whose endpoint returns an empty model; this
process generates the load. Each phase keeps ``--in-flight`` requests going for
``--seconds`` through the mesh client; the no-op phase measures the runtime (envelope,
context, validation, NATS round trip), the render phase adds one Postgres lookup (labels
move, so the version is resolved per request), the hop to a render thread and the render
of the cached compiled template. Prints both throughputs, their ratio and sequential (one
in flight) latencies.

    .venv/bin/python bench/bench_prompt.py [--seconds 5] [--in-flight 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bus.breaker import BreakerConfig
from bus.client import Client
from bus.connection import connect
from bus.context import new_context
from bus.errors import Unavailable
from bus.settings import Settings
from bus.telemetry import setup_logging
from bus.worker import Endpoint, Worker, WorkerEnv
from mesh.infra import embedded
from mesh.runner import serving
from schemas import prompt
from schemas.context import Context
from schemas.operations import Operation

TENANT = "bench"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
TEMPLATE = (
    "You are {{ persona }}. Answer the question using only the passages.\n"
    "{% for d in docs %}[{{ d.id }}] {{ d.text }}\n{% endfor %}"
    "Question: {{ question }}"
)
VARIABLES = {
    "persona": "a careful support assistant",
    "question": "How do I rotate my API key?",
    "docs": [
        {"id": f"doc-{i}", "text": f"Passage {i}: keys rotate from the settings page. " * 3}
        for i in range(3)
    ],
}


class Empty(BaseModel):
    pass


# The bench-only worker's one operation: the runtime alone, nothing behind it.
NOOP = Operation("noop", "noop", Empty, Empty)


async def _noop(req: Empty, ctx: Context) -> Empty:
    return Empty()


async def _phase(
    client: Client,
    op: Operation[Any, Any],
    payload: dict[str, Any],
    seconds: float,
    in_flight: int,
) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    done = errors = 0

    async def lane() -> None:
        nonlocal done, errors
        while loop.time() < end:
            try:
                await client.call(op, payload, new_context(TENANT, timeout=10.0))
                done += 1
            except Exception:
                errors += 1

    async with asyncio.TaskGroup() as tasks:
        for _ in range(in_flight):
            tasks.create_task(lane())
    return done, errors


async def _latency(
    client: Client, op: Operation[Any, Any], payload: dict[str, Any], n: int
) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await client.call(op, payload, new_context(TENANT, timeout=10.0))
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _serve(settings: Settings) -> None:
    """The worker process: prompt + no-op workers until SIGTERM."""
    assert settings.nats_url
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await connect(settings.nats_url, name="bench-prompt-workers")
    env = WorkerEnv(settings=settings, nc=nc, client=Client(nc), js=nc.jetstream())
    noop = Worker("noop", endpoints=[Endpoint(NOOP, _noop)])
    try:
        async with serving(["prompt"], env), noop.serve(nc):
            await stop.wait()
    finally:
        await nc.drain()


async def _ready(client: Client) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            await client.call(NOOP, {}, new_context(TENANT, timeout=2.0))
            await client.call(prompt.LIST, {"limit": 1}, new_context(TENANT, timeout=2.0))
            return
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _drive(settings: Settings, seconds: float, in_flight: int) -> None:
    assert settings.nats_url
    nc = await connect(settings.nats_url, name="bench-prompt")
    client = Client(nc, breaker=BreakerConfig(failure_threshold=1_000_000))
    try:
        await _ready(client)
        ctx = new_context(TENANT, timeout=10.0)
        await client.call(prompt.CREATE, {"name": "hot", "type": "text", "template": TEMPLATE}, ctx)
        render = {"name": "hot", "variables": VARIABLES}
        out = await client.call(prompt.RENDER, render, ctx)
        print(f"rendered {len(out.text or '')} characters from version {out.version}")
        cases: list[tuple[Operation[Any, Any], dict[str, Any]]] = [
            (NOOP, {}),
            (prompt.RENDER, render),
        ]
        for op, payload in cases:  # warm-up: connections, caches, plans
            await _phase(client, op, payload, 1.0, in_flight)
        results = {}
        for op, payload in cases:
            done, errors = await _phase(client, op, payload, seconds, in_flight)
            lat = await _latency(client, op, payload, 200)
            results[op.subject] = (done / seconds, errors, lat)
        print(f"\n{in_flight} in flight, {seconds:g} s per phase; workers in their own process")
        print(f"{'endpoint':<24}{'req/s':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}")
        for subject, (rate, errors, lat) in results.items():
            p50 = statistics.median(lat)
            p99 = statistics.quantiles(lat, n=100)[98]
            print(f"{subject:<24}{rate:>10.0f}{errors:>8}{p50:>9.2f}{p99:>9.2f}")
        noop_rate = results[NOOP.subject][0]
        render_rate = results[prompt.RENDER.subject][0]
        print(f"\nratio render/noop: {render_rate / noop_rate:.2f}")
    finally:
        await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each phase")
    parser.add_argument("--in-flight", type=int, default=64, help="concurrent requests")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    setup_logging("warning")  # a debug line per request would measure the logger
    if args.serve:
        asyncio.run(_serve(Settings()))  # type: ignore[call-arg]
        return
    if not 0 < args.seconds <= 60:
        raise SystemExit("--seconds must be in (0, 60]")
    with tempfile.TemporaryDirectory(prefix="bench-prompt-") as tmp:
        with embedded(Path(tmp), redis=False, durable=False) as infra:
            assert infra.nats and infra.postgres
            urls = {"NATS_URL": infra.nats.url, "DATABASE_URL": infra.postgres.url}
            workers = subprocess.Popen(
                [sys.executable, __file__, "--serve"],
                env={**os.environ, **urls, "LOG_LEVEL": "warning"},
            )
            try:
                settings = Settings(nats_url=infra.nats.url)  # type: ignore[call-arg]
                asyncio.run(_drive(settings, args.seconds, args.in_flight))
            finally:
                workers.send_signal(signal.SIGTERM)
                try:
                    workers.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    workers.kill()
                    workers.wait()


if __name__ == "__main__":
    main()
