"""No-op endpoint on the worker runtime vs raw nats-py request/reply, same run.

Each server runs in its own process (as in production); this process is the load
generator: 64 requests in flight, the same envelope body for each. The servers take turns
(raw, runtime, raw, runtime, ...) so a change in the machine's load hits both alike; each
round prints both rates, their ratio and the server's CPU time per request, and the goal
figure is the MEDIAN of the per-round ratios. Target: runtime >= 0.85x raw
(docs/architecture.md, "Runtime performance").

    .venv/bin/python bench/bench_runtime.py [--seconds 5] [--rounds 3] [--micro]

Takes about rounds x (2 x seconds + 2 s): ~40 s with the defaults. ``--micro`` adds a
bare nats.micro echo to each round (what the runtime is built on).
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
SUBJECTS = {"raw": "raw.echo", "micro": "micro.echo", "runtime": "bench.noop.request"}
TARGET = 0.85
_TICK = os.sysconf("SC_CLK_TCK")


async def serve(kind: str, url: str) -> None:
    from pydantic import BaseModel

    from bus.telemetry import setup_logging, setup_tracing
    from bus.worker import Endpoint, Worker
    from schemas.operations import Operation

    # As `mesh worker` runs it: INFO logs, tracing set up as configured (no OTLP endpoint
    # here, so no provider: trace context is still carried).
    setup_logging("info")
    setup_tracing("bench")
    nc = await nats.connect(url)
    stop = asyncio.Event()
    if kind == "raw":

        async def echo(msg) -> None:  # type: ignore[no-untyped-def]
            await msg.respond(msg.data)

        await nc.subscribe(SUBJECTS["raw"], queue="raw", cb=echo)
        await nc.flush()
        print("ready", flush=True)
        await stop.wait()
    elif kind == "micro":
        from nats.micro import add_service

        async def micro_echo(req) -> None:  # type: ignore[no-untyped-def]
            await req.respond(req.data)

        service = await add_service(nc, name="micro", version="0.1.0", queue_group="micro")
        await service.add_endpoint(name="echo", subject=SUBJECTS["micro"], handler=micro_echo)
        await nc.flush()
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
            await nc.flush()
            print("ready", flush=True)
            await stop.wait()


async def load(url: str, subject: str, seconds: float) -> tuple[float, int, list[float]]:
    """Requests per second, requests answered, latencies (s)."""
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
    return count / elapsed, count, latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def one_round(
    url: str, kind: str, seconds: float, nats_pid: int
) -> tuple[float, dict[str, float], list[float]]:
    """(req/s, CPU µs per request of the server, nats-server and this load generator,
    latencies) of one server for ``seconds``."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--url", url],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        proc.stdout.readline()  # "ready"
        pids = {"server": proc.pid, "nats": nats_pid, "client": os.getpid()}
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        rate, count, latencies = asyncio.run(load(url, SUBJECTS[kind], seconds))
        # Includes the warm-up: a few hundred requests.
        cpu = {k: (cpu_seconds(pid) - cpu0[k]) / max(1, count) * 1e6 for k, pid in pids.items()}
    finally:
        proc.terminate()
        proc.wait(10)
    return rate, cpu, latencies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--micro", action="store_true", help="also measure bare nats.micro")
    ap.add_argument("--serve", choices=list(SUBJECTS))
    ap.add_argument("--url")
    args = ap.parse_args()
    if args.serve:
        # Every server on uvloop, as `mesh worker` runs (mesh/cli.py).
        uvloop.run(serve(args.serve, args.url))
        return
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")

    from mesh.infra import NatsServer

    kinds = ["raw", "micro", "runtime"] if args.micro else ["raw", "runtime"]
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    print(f"in flight: {IN_FLIGHT}, {args.rounds} alternating rounds x {args.seconds:.0f}s each")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    others: dict[str, list[float]] = {k: [] for k in kinds}  # client + nats-server
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        assert server.proc is not None
        try:
            for n in range(args.rounds):
                line = []
                for kind in kinds:
                    rate, cpu, latencies = one_round(
                        server.url, kind, args.seconds, server.proc.pid
                    )
                    rates[kind].append(rate)
                    cpus[kind].append(cpu["server"])
                    others[kind].append(cpu["client"] + cpu["nats"])
                    lat[kind].extend(latencies)
                    line.append(
                        f"{kind} {rate:7.0f} req/s {cpu['server']:5.1f} µs CPU/req"
                        f" (client {cpu['client']:.1f}, nats-server {cpu['nats']:.1f})"
                    )
                ratios.append(rates["runtime"][-1] / rates["raw"][-1])
                print(f"round {n + 1}: " + " | ".join(line) + f" | ratio {ratios[-1]:.2f}x")
        finally:
            server.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    names = {"raw": "raw nats-py echo", "micro": "nats.micro echo", "runtime": "runtime no-op"}
    for kind in kinds:
        print(
            f"{names[kind]:<18} median {statistics.median(rates[kind]):>7.0f} req/s"
            f"   server CPU {statistics.median(cpus[kind]):5.1f} µs/req"
            f"   p50 {pct(lat[kind], 0.5):5.2f} ms   p99 {pct(lat[kind], 0.99):5.2f} ms"
        )
    if args.micro:
        micro = statistics.median(m / r for m, r in zip(rates["micro"], rates["raw"], strict=True))
        print(f"ratio nats.micro/raw (median of rounds): {micro:.2f}x")
    ratio = statistics.median(ratios)
    verdict = "OK" if ratio >= TARGET else "BELOW"
    print(
        f"ratio runtime/raw (median of {args.rounds} rounds): {ratio:.2f}x"
        f" (target >= {TARGET:.2f}x) -> {verdict}"
    )
    # All three processes share the cores, so the rate follows the CPU a request costs in
    # all of them: the server's share that would give TARGET at the same client and
    # nats-server cost per request.
    raw_total = statistics.median(cpus["raw"]) + statistics.median(others["raw"])
    rest = statistics.median(others["runtime"])
    budget = raw_total / TARGET - rest
    print(
        f"CPU per request, all processes: raw {raw_total:.1f} µs, runtime"
        f" {statistics.median(cpus['runtime']) + rest:.1f} µs; at {TARGET:.2f}x the runtime"
        f" server could spend {budget:.1f} µs (it spends"
        f" {statistics.median(cpus['runtime']):.1f})"
    )


if __name__ == "__main__":
    main()
