"""LLMOps at scale: ingest rate, and metrics/query latency from the rollups beside the
same questions asked of the raw table, in one run.

Starts embedded NATS and Postgres (``mesh.infra.embedded``), publishes ``--events``
operation events (default 1,000,000) spread over the last 30 days for 50 users and 8
models onto ``events.llmops.operation`` (as the gateway does), then starts the LLMOps
worker as its own process (``mesh worker llmops``, the production shape) and measures how
fast it drains the stream into Postgres (batched COPY + rollups in one transaction).
Then it asks, ``--repeats`` times each, through the worker's reader:

* ``metrics`` for 30 days grouped by model and by user, hour and day buckets
  (requests, cost, p95 latency) — from the rollups, and from the raw table
  (``percentile_disc`` over the rows, the "no rollups" baseline);
* ``query`` for one user, last 24 h, first page of 100 (raw table, by index).

    .venv/bin/python bench/bench_llmops.py [--events 1000000] [--repeats 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bus import jetstream
from bus.connection import connect
from bus.context import new_context
from bus.postgres import create_database
from mesh.infra import embedded
from schemas.llmops import OPERATION_SUBJECT, MetricsRequest, QueryRequest
from workers.llmops.queries import Reader

TENANT = "bench"
USERS = [f"user-{i:02d}" for i in range(50)]
MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "o3-mini",
    "claude-sonnet",
    "claude-haiku",
    "gemini-flash",
    "mistral-large",
    "local-chat",
]
DAYS = 30


def events(n: int, now: datetime) -> list[dict[str, Any]]:
    rnd = random.Random(42)
    start = now - timedelta(days=DAYS)
    step = (DAYS * 86_400_000 - 60_000) / n
    weights = [1 / (i + 1) for i in range(len(USERS))]  # a few heavy users, a long tail
    users = rnd.choices(USERS, weights, k=n)
    out = []
    base = int(start.timestamp() * 1000)
    for i in range(n):
        model = MODELS[rnd.randrange(len(MODELS))]
        tokens_in, tokens_out = rnd.randrange(20, 4000), rnd.randrange(5, 1000)
        stream = rnd.random() < 0.3
        failed = rnd.random() < 0.02
        out.append(
            {
                "event_id": f"ev-{i}",
                "time_ms": base + int(i * step),
                "operation": "stream" if stream else "generate",
                "tenant": TENANT,
                "user": users[i],
                "model": model,
                "provider": model.split("-")[0],
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "cached_tokens_read": tokens_in // 2 if rnd.random() < 0.2 else None,
                "cost": round(tokens_in * 1e-6 + tokens_out * 4e-6, 8),
                "latency_ms": round(rnd.lognormvariate(6.5, 0.6), 2),
                "ttft_ms": round(rnd.lognormvariate(5.5, 0.5), 2) if stream else None,
                "status": "error" if failed else "ok",
                "error_code": "upstream_error" if failed else None,
            }
        )
    return out


async def publish_all(js: Any, evs: list[dict[str, Any]]) -> float:
    ctx = new_context(TENANT, timeout=3600)
    sem = asyncio.Semaphore(512)
    started = time.perf_counter()

    async def one(e: dict[str, Any]) -> None:
        async with sem:
            await jetstream.publish(js, OPERATION_SUBJECT, e, ctx, msg_id=e["event_id"])

    for chunk in range(0, len(evs), 20_000):
        async with asyncio.TaskGroup() as tg:
            for e in evs[chunk : chunk + 20_000]:
                tg.create_task(one(e))
    return time.perf_counter() - started


async def count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM llmops.seen WHERE tenant_id = $1", TENANT)
        )
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


async def timed(fn: Any, repeats: int) -> tuple[float, float, int]:
    times, size = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        try:
            result = await fn()
        except TimeoutError:  # the pool's 10 s command timeout, as the service has it
            return float("inf"), float("inf"), -1
        times.append((time.perf_counter() - t) * 1000)
        size = len(getattr(result, "buckets", getattr(result, "operations", [])))
    times.sort()
    p95 = times[min(len(times) - 1, max(0, int(round(0.95 * len(times))) - 1))]
    return statistics.median(times), p95, size


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-llmops-"))
    with embedded(base, redis=False, durable=False) as infra:
        assert infra.nats and infra.postgres
        nc = await connect(infra.nats.url, name="bench")
        js = nc.jetstream()
        await jetstream.ensure_streams(js)
        now = datetime.now(UTC)
        print(f"generating {args.events:,} events over {DAYS} days ...", flush=True)
        evs = events(args.events, now)
        seconds = await publish_all(js, evs)
        print(f"published into JetStream in {seconds:.1f} s ({args.events / seconds:,.0f}/s)")
        del evs

        env = {
            **os.environ,
            "NATS_URL": infra.nats.url,
            "DATABASE_URL": infra.postgres.url,
            "LLMOPS_RETENTION_DAYS": str(DAYS + 2),
            "LOG_LEVEL": "warning",
        }
        log = open(base / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [sys.executable, "-m", "mesh", "worker", "llmops"], env=env, stdout=log, stderr=log
        )
        try:
            first_at = None
            while True:
                n = await count(infra.postgres.url)
                if n and first_at is None:
                    first_at, first_n = time.perf_counter(), n
                if n >= args.events:
                    break
                if worker.poll() is not None:
                    raise SystemExit(f"worker exited; see {base / 'worker.log'}")
                await asyncio.sleep(0.5)
            assert first_at is not None
            elapsed = time.perf_counter() - first_at
            rate = (args.events - first_n) / elapsed if elapsed > 0 else float("inf")
            print(
                f"ingest: {args.events:,} events stored in {elapsed:.1f} s "
                f"({rate:,.0f} events/s sustained, JetStream -> COPY + 3 rollups)"
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)

        db = await create_database(infra.postgres.url)
        try:
            async with db.connection() as conn:
                sizes = await conn.fetch(
                    "SELECT relname, n_live_tup FROM pg_stat_user_tables"
                    " WHERE schemaname = 'llmops' AND relname LIKE 'rollup%' ORDER BY 1"
                )
                await conn.execute(
                    "ANALYZE llmops.operations, llmops.rollup_hour, llmops.rollup_hour_nouser,"
                    " llmops.rollup_day",
                    timeout=600,
                )
            print("rollup rows: " + ", ".join(f"{r[0]}={r[1]:,}" for r in sizes))
            reader = Reader(db)
            window = {"from": now - timedelta(days=DAYS), "to": now + timedelta(minutes=1)}
            with_p95 = ["requests", "cost", "latency_p95"]
            sums = ["requests", "errors", "tokens_in", "cost"]
            print(
                f"\n{'question (30 days)':46} {'service p50/p95 ms':>26}"
                f" {'rollups p50/p95':>18} {'raw p50/p95':>18}"
            )
            for metrics in (with_p95, sums):
                for group in ("model", "user"):
                    for bucket in ("hour", "day"):
                        req = MetricsRequest.model_validate(
                            {**window, "bucket": bucket, "group_by": [group], "metrics": metrics}
                        )
                        chosen = (await reader.metrics(TENANT, req)).source
                        s50, s95, size = await timed(
                            lambda req=req: reader.metrics(TENANT, req), args.repeats
                        )
                        r50, r95, _ = await timed(
                            lambda req=req: reader.metrics(TENANT, req, source="rollup"),
                            args.repeats,
                        )
                        b50, b95, bsize = await timed(
                            lambda req=req: reader.metrics(TENANT, req, source="raw"),
                            max(2, args.repeats // 3),
                        )
                        assert bsize in (size, -1), (size, bsize)
                        what = "p95" if metrics is with_p95 else "sums"
                        label = f"{what} by {group}, {bucket} ({size:,} rows)"
                        print(
                            f"{label:46} {s50:8.1f} / {s95:7.1f} ({chosen:6})"
                            f" {r50:8.1f} / {r95:7.1f} {b50:8.1f} / {b95:7.1f}"
                        )
            q = QueryRequest.model_validate(
                {
                    "from": now - timedelta(hours=24),
                    "to": now + timedelta(minutes=1),
                    "filters": {"user": USERS[7]},
                    "limit": 100,
                }
            )
            q50, q95, size = await timed(lambda: reader.query(TENANT, q), args.repeats * 3)
            label = f"query one user, 24 h, first page ({size} rows)"
            print(f"{label:46} {q50:8.1f} / {q95:7.1f}")
        finally:
            await db.close()
            await nc.drain()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
