"""LLMOps at scale: ingest rate, and metrics/query latency from the rollups beside the
same questions asked of the raw table, in one run.

Starts embedded NATS and Postgres (``mesh.infra.embedded``, data in a temporary directory
under ``--data-dir``, deleted at the end), publishes ``--events`` operation events
(default 1,000,000) spread over the last 30 days for 50 users and 8 models onto
``events.llmops.operation`` (as the gateway does, async publish acks), then starts the
LLMOps worker as its own process (``mesh worker llmops``, the production shape) and
measures how fast it drains the stream into Postgres (batched COPY + six rollup upserts
in one transaction per batch). Then it asks, ``--repeats`` times each:

* ``metrics`` for 30 days grouped by model and by user, hour and day buckets
  (requests, cost, p95 latency; and sums only) — what the service answers (its
  ``source``: the rollups), beside the same question over the raw table
  (``percentile_disc`` over the rows, the "no rollups" baseline), and how far the
  rollups' p95 is from the exact one;
* ``query`` for one user, last 24 h, first page of 100 (raw table, by index).

    .venv/bin/python bench/bench_llmops.py [--events 1000000] [--repeats 10]

6–7 minutes for 1,000,000 events at load ~4 on a 2-core machine (publish 1–2 min,
ingest 3.5–4 min, questions ~1.5 min); ``--max-minutes`` (default 40) bounds the whole
run.
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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bus import jetstream
from bus.codec import Codec
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


def events(n: int, now: datetime, chunk: int = 20_000) -> Iterator[list[dict[str, Any]]]:
    """The events in time order, ``chunk`` at a time (1M dicts at once would be ~1 GB)."""
    rnd = random.Random(42)
    start = now - timedelta(days=DAYS)
    step = (DAYS * 86_400_000 - 60_000) / n
    weights = [1 / (i + 1) for i in range(len(USERS))]  # a few heavy users, a long tail
    base = int(start.timestamp() * 1000)
    for first in range(0, n, chunk):
        out = []
        size = min(chunk, n - first)
        users = rnd.choices(USERS, weights, k=size)
        for j in range(size):
            i = first + j
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
                    "user": users[j],
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
        yield out


async def publish_all(js: Any, n: int, now: datetime) -> float:
    """Publish with async acks (many in flight), checking every ack."""
    ctx = new_context(TENANT, timeout=3600)
    headers, codec = ctx.headers(), Codec()
    started = time.perf_counter()
    for chunk in events(n, now):
        futures = [
            await js.publish_async(
                OPERATION_SUBJECT,
                codec.encode(headers, e),
                headers={"Nats-Msg-Id": e["event_id"]},
            )
            for e in chunk
        ]
        for ack in await asyncio.gather(*futures):
            assert ack.stream == "LLMOPS", ack
    return time.perf_counter() - started


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


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


GOAL_METRICS_P95_MS = 150.0
GOAL_QUERY_P95_MS = 300.0
GOAL_INGEST = 2_000


async def ingest(infra: Any, base: Path, n: int, deadline: float) -> None:
    """Start ``mesh worker llmops`` on the filled stream; time it storing every event."""
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
        first_at, first_n, marks = None, 0, []
        quarter = 1
        while True:
            stored = await count(infra.postgres.url)
            now = time.perf_counter()
            if stored and first_at is None:
                first_at, first_n = now, stored
            if first_at is not None and stored >= quarter * n / 4:
                marks.append((now, stored))
                quarter += 1
            if stored >= n:
                break
            if worker.poll() is not None:
                raise SystemExit(f"worker exited; see {base / 'worker.log'}")
            if now > deadline:
                raise SystemExit(f"out of time: {stored:,} of {n:,} stored")
            await asyncio.sleep(0.5)
        assert first_at is not None
        elapsed = time.perf_counter() - first_at
        rate = (n - first_n) / elapsed if elapsed > 0 else float("inf")
        rates, (t0, n0) = [], (first_at, first_n)
        for t, k in marks:
            if t > t0:
                rates.append(f"{(k - n0) / (t - t0):,.0f}")
            t0, n0 = t, k
        print(
            f"ingest: {n:,} events stored in {elapsed:.1f} s: {rate:,.0f} events/s sustained"
            f" (goal >= {GOAL_INGEST:,}; per quarter of the events: {' / '.join(rates)})"
            f" [{load()}]",
            flush=True,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        log.close()


async def questions(infra: Any, now: datetime, repeats: int) -> None:
    db = await create_database(infra.postgres.url)
    try:
        async with db.connection() as conn:
            await conn.execute("VACUUM ANALYZE", timeout=900)
            sizes = await conn.fetch(
                "SELECT relname, n_live_tup FROM pg_stat_user_tables"
                " WHERE schemaname = 'llmops' AND relname LIKE 'rollup%' ORDER BY 1"
            )
        print("rollup rows: " + ", ".join(f"{r[0]}={r[1]:,}" for r in sizes))
        reader = Reader(db)
        window = {"from": now - timedelta(days=DAYS), "to": now + timedelta(minutes=1)}
        with_p95 = ["requests", "cost", "latency_p95"]
        sums = ["requests", "errors", "tokens_in", "cost"]
        print(
            f"\n{'question (30 days)':40} {'service p50/p95 ms':>26} {'raw table p50/p95':>20}"
            f" {'p95 vs exact':>13}   goal p95 < {GOAL_METRICS_P95_MS:.0f} ms"
        )
        for metrics in (with_p95, sums):
            for group in ("model", "user"):
                for bucket in ("hour", "day"):
                    req = MetricsRequest.model_validate(
                        {**window, "bucket": bucket, "group_by": [group], "metrics": metrics}
                    )
                    answer = await reader.metrics(TENANT, req)
                    s50, s95, size = await timed(
                        lambda req=req: reader.metrics(TENANT, req), repeats
                    )
                    b50, b95, bsize = await timed(
                        lambda req=req: reader.metrics(TENANT, req, source="raw"),
                        max(2, repeats // 3),
                    )
                    assert bsize in (size, -1), (size, bsize)
                    off = ""
                    if "latency_p95" in metrics and bsize != -1:
                        exact = await reader.metrics(TENANT, req, source="raw")
                        worst = max(
                            abs(a["values"]["latency_p95"] - b["values"]["latency_p95"])
                            / b["values"]["latency_p95"]
                            for a, b in zip(answer.buckets, exact.buckets, strict=True)
                            if a["values"]["latency_p95"] and b["values"]["latency_p95"]
                        )
                        off = f"max {worst * 100:.1f} %"
                    what = "p95" if metrics is with_p95 else "sums"
                    label = f"{what} by {group}, {bucket} ({size:,} rows)"
                    verdict = "ok" if s95 < GOAL_METRICS_P95_MS else "over"
                    print(
                        f"{label:40} {s50:8.1f} / {s95:7.1f} ({answer.source:6})"
                        f" {b50:9.1f} / {b95:8.1f} {off:>13}   {verdict}",
                        flush=True,
                    )
        q = QueryRequest.model_validate(
            {
                "from": now - timedelta(hours=24),
                "to": now + timedelta(minutes=1),
                "filters": {"user": USERS[7]},
                "limit": 100,
            }
        )
        q50, q95, size = await timed(lambda: reader.query(TENANT, q), repeats * 3)
        label = f"query one user, 24 h, first page ({size} rows)"
        verdict = "ok" if q95 < GOAL_QUERY_P95_MS else "over"
        print(
            f"{label:40} {q50:8.1f} / {q95:7.1f}   (raw table by index;"
            f" goal p95 < {GOAL_QUERY_P95_MS:.0f} ms: {verdict})"
        )
        print(f"[{load()}]")
    finally:
        await db.close()


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    deadline = started + args.max_minutes * 60
    print(f"bench_llmops: {args.events:,} events, 30 days, 50 users, 8 models [{load()}]")
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="run-", dir=args.data_dir) as tmp:
        base = Path(tmp)
        with embedded(base, redis=False, durable=False) as infra:
            assert infra.nats and infra.postgres
            nc = await connect(infra.nats.url, name="bench")
            try:
                js = nc.jetstream()
                await jetstream.ensure_streams(js)
                now = datetime.now(UTC)
                seconds = await publish_all(js, args.events, now)
                print(
                    f"published into JetStream in {seconds:.1f} s"
                    f" ({args.events / seconds:,.0f}/s) [{load()}]",
                    flush=True,
                )
                await ingest(infra, base, args.events, deadline)
                await questions(infra, now, args.repeats)
            finally:
                await nc.drain()
    print(f"total {time.perf_counter() - started:.0f} s; data deleted")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--data-dir", default="/work/bench-data/llmops", help="a run's data goes under it"
    )
    parser.add_argument("--max-minutes", type=float, default=40.0)
    args = parser.parse_args()

    async def bounded() -> None:
        async with asyncio.timeout(args.max_minutes * 60):  # cleans up on the way out
            await main(args)

    asyncio.run(bounded())
