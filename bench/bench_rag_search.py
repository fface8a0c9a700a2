"""RAG hybrid search at scale: a large tenant with 1,000,000 chunks (and a small tenant of
1,000 in the same table), through ``rag.search`` end to end, with each leg timed apart.

The dataset (bench/rag_dataset.py: word-frequency text with titles, SYNTHETIC clustered
384-d vectors) is built once into ``--data-dir`` and reused while its fingerprint (RAG
migrations, generator, size) matches; the first run builds it (tens of minutes on two
cores), later runs only measure. NATS and Redis start in a temporary directory; the
gateway (real local embedder when this build has it), cache and RAG workers run in-process.

Printed: the machine's load; the build time (or "reused"); for the large tenant, p50/p99
of hybrid ``rag.search`` (top_k 10) end to end over the ``--warmup`` questions served
first after Postgres starts (its buffers empty) and then — the table and its indexes
loaded into the buffers (:func:`prewarm`) — over ``--queries`` new questions (steady
state: every question new, statistics cached as a running service has them),
with the time of each stage inside those searches (workers/rag/timings.py); then each
leg alone on the same question: the embed call, the vector leg (and its plan), the
keyword leg warm (the question's statistics cached) and cold (nothing cached, as after
a write); the BASELINE keyword leg
of the same run (bench/rag_baseline.py: the unbounded leg it replaces) on the first
``--baseline-queries`` questions; the same under ``--concurrency`` callers; the small
tenant; and the EXPLAIN ANALYZE plans of one keyword and one vector leg.

    .venv/bin/python bench/bench_rag_search.py [--chunks 1000000] [--queries 200]

Run time with a built dataset: about 2-5 minutes (the warm-up and the baseline's queries).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rag_dataset  # noqa: E402
from mesh_workers import answering, serve_workers  # noqa: E402
from rag_baseline import keyword_leg_unbounded  # noqa: E402

from bus.client import Client  # noqa: E402
from bus.context import new_context  # noqa: E402
from bus.postgres import create_database  # noqa: E402
from bus.settings import Settings  # noqa: E402
from bus.sql import vector_literal  # noqa: E402
from bus.telemetry import setup_logging  # noqa: E402
from mesh.infra import embedded  # noqa: E402
from mesh.registry import WORKERS  # noqa: E402
from mesh.runner import bus_env  # noqa: E402
from schemas import rag  # noqa: E402
from schemas.rag import DEFAULT_EMBEDDING_MODEL  # noqa: E402
from workers.rag import search  # noqa: E402
from workers.rag.service import session as rag_session  # noqa: E402


def ctx(tenant: str, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    return new_context(tenant, timeout=timeout)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def line(name: str, values: list[float], extra: str = "") -> str:
    return (
        f"    {name:<22} p50 {pct(values, 50) * 1000:7.1f} ms  p99 {pct(values, 99) * 1000:7.1f} ms"
        f"  mean {statistics.mean(values) * 1000:7.1f} ms  (n={len(values)}){extra}"
    )


def questions(n: int, seed: int = 5) -> list[str]:
    """Questions as users type them: two words of one topic, two common-ish words."""
    vocab = rag_dataset.Vocabulary()
    rng = np.random.default_rng(seed)
    mid = np.arange(100, 5000)
    p = vocab.p[mid] / vocab.p[mid].sum()
    out = []
    for _ in range(n):
        topic = int(rng.integers(rag_dataset.TOPICS))
        local = vocab.topics[topic][rng.choice(rag_dataset.TOPIC_WORDS, 2, p=vocab.topic_p)]
        common = rng.choice(mid, 2, p=p)
        words = list(vocab.words[np.concatenate([local, common])])
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def print_stages(records: list[dict[str, float]]) -> None:
    """Where the end-to-end searches' time went (workers/rag/timings.py)."""
    print("    inside rag.search (the same searches, per stage; legs run concurrently):")
    for name in sorted({k for r in records for k in r}, key=lambda k: (k != "handler", k)):
        values = [r.get(name, 0.0) for r in records]
        if name.endswith(".n"):
            print(f"      {name:<20} mean {statistics.mean(values):6.2f} per search")
        else:
            print("  " + line(name, values)[2:].replace("(n=", "(of "))


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = await fn()
    return time.perf_counter() - t0, out


async def explain(conn: Any, sql: str, *args: Any) -> str:
    rows = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF, BUFFERS) " + sql, *args)
    return "\n".join("      " + re.sub(r"'\[[^\]]{40,}\]'", "'[...]'", r[0]) for r in rows)


async def measure(args: argparse.Namespace, url: str, keyword_only: bool) -> None:
    real = "gateway" in WORKERS
    print(
        "embedder: "
        + (
            "the Gateway Service's local embedder (real model) for the questions"
            if real
            else "TEST-ONLY fake gateway (hashed words): this build has no Gateway Service"
        )
        + "; chunk vectors are SYNTHETIC (clustered, 384-d), not embeddings of their text"
    )
    qs = questions(args.queries + args.warmup)
    warm, qs = qs[: args.warmup], qs[args.warmup :]
    with tempfile.TemporaryDirectory() as tmp, embedded(Path(tmp), postgres=False) as infra:
        assert infra.nats and infra.redis
        settings = Settings(  # type: ignore[call-arg]
            nats_url=infra.nats.url, database_url=url, redis_url=infra.redis.url
        )
        async with bus_env(settings, "bench-rag-search") as env, AsyncExitStack() as stack:
            workers = await serve_workers(env, stack, ["cache", "rag"], real_gateway=real)
            models = answering(workers["rag"], "ingest").models
            retriever = answering(workers["rag"], "search")
            stages: list[dict[str, float]] = []
            retriever.observer = stages.append
            client = Client(env.nc)
            db = await create_database(url, init=rag_session)  # as the RAG worker's pool
            try:
                for tenant, coll, n in (
                    (rag_dataset.TENANT, rag_dataset.COLLECTION, args.queries),
                    (rag_dataset.SMALL_TENANT, rag_dataset.SMALL_COLLECTION, 50),
                ):
                    await one_tenant(
                        args, client, models, db, tenant, coll, warm, qs[:n], keyword_only, stages
                    )
            finally:
                await db.close()


async def prewarm(db: Any) -> None:
    """Load the chunks table and its indexes into Postgres's shared buffers, as a server
    that has been serving for a while holds them (the buffers are sized for it:
    bench/rag_dataset.py). Otherwise what "steady state" measures depends on what the OS
    page cache kept from earlier processes: each page missing from the buffers costs a
    system call, or a storage read. A VACUUM that reads every heap page and every index
    page without a ring buffer (Postgres 16's BUFFER_USAGE_LIMIT 0) does exactly that;
    the table is not changed."""
    t0 = time.perf_counter()
    async with db.connection() as conn:
        await conn.execute(
            "VACUUM (DISABLE_PAGE_SKIPPING, INDEX_CLEANUP ON, BUFFER_USAGE_LIMIT 0) rag.chunks",
            timeout=1800,
        )
    print(f"  buffers prewarmed (VACUUM without a ring buffer) in {time.perf_counter() - t0:.0f} s")


async def one_tenant(  # noqa: PLR0913
    args: argparse.Namespace,
    client: Client,
    models: Any,
    db: Any,
    tenant: str,
    coll: str,
    warm: list[str],
    qs: list[str],
    keyword_only: bool,
    stages: list[dict[str, float]],
) -> None:
    async with db.connection() as conn:
        version = await conn.fetchval(
            "SELECT version FROM rag.collections WHERE tenant_id = $1 AND collection_id = $2",
            tenant,
            coll,
        )
        chunks = await conn.fetchval(
            "SELECT sum(chunk_count) FROM rag.documents WHERE tenant_id = $1", tenant
        )
    scope = search.Scope(tenant, [coll], rag_dataset.DIMS, None, (int(version),))
    uncached = search.Scope(tenant, [coll], rag_dataset.DIMS, None)

    async def rag_search(q: str) -> Any:
        return await client.call(
            rag.SEARCH, {"collection_ids": [coll], "query": q, "top_k": 10}, ctx(tenant)
        )

    if keyword_only:
        print("  (no HNSW index yet: only the keyword legs are measured)")
    else:
        # A server that has been serving: other questions first (the first ones after a
        # start find Postgres's buffers empty; they are printed as such).
        first = [(await timed(lambda q=q: rag_search(q)))[0] for q in warm]
        if tenant == rag_dataset.TENANT:
            await prewarm(db)
    total, embed, vec, kw_warm, kw_cold, base = [], [], [], [], [], []
    plans: set[str] = set()
    overlap = []
    stages.clear()
    for i, q in enumerate(qs):
        if not keyword_only:
            # As a running service searches: every question new, the statistics cached
            # by the questions before it (per lexeme, under the collection's version).
            total.append((await timed(lambda q=q: rag_search(q)))[0])
            t, [vector] = await timed(
                lambda q=q: models.embed(ctx(tenant), DEFAULT_EMBEDDING_MODEL, [q])
            )
            embed.append(t)
            t, (_, plan) = await timed(lambda v=vector: search.vector_leg(db, scope, v, 50))
            vec.append(t)
            plans.add(plan)
        t, new = await timed(lambda q=q: search.keyword_leg(db, scope, q, 50))
        kw_warm.append(t)
        # Cold: nothing cached under this scope (the first search after a write).
        kw_cold.append((await timed(lambda q=q: search.keyword_leg(db, uncached, q, 50)))[0])
        if i < args.baseline_queries:
            t, old = await timed(lambda q=q: keyword_leg_unbounded(db, scope, q, 50))
            base.append(t)
            top_old = {c for c, _ in old[:10]}
            if top_old:
                overlap.append(len(top_old & {c for c, _ in new[:10]}) / len(top_old))
    print(f"\n{tenant} tenant: {chunks} chunks; hybrid rag.search, top_k=10, 50 per leg")
    if not keyword_only:
        if first:
            print(line("hybrid, after a start", first, "  (buffers cold: the warm-up questions)"))
        print(line("hybrid end to end", total))
        print(line("embed call", embed))
        print(line("vector leg", vec, f"  plan {'/'.join(sorted(plans))}"))
        print_stages(stages[: len(total)])
    print(line("keyword leg (warm)", kw_warm))
    print(line("keyword leg (cold)", kw_cold, "  (no statistics cached: as after a write)"))
    if base:
        print(line("BASELINE keyword leg", base, "  (unbounded: the leg before this change)"))
        print(
            f"    top-10 of the bounded leg holds {statistics.mean(overlap) * 100:.0f}% of the"
            " baseline's top 10 (same BM25, bounded candidates)"
        )
    if args.concurrency > 1 and not keyword_only:
        sem_q = list(qs)
        lat: list[float] = []

        async def caller() -> None:
            while sem_q:
                q = sem_q.pop()
                lat.append((await timed(lambda q=q: rag_search(q)))[0])

        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(args.concurrency)))
        wall = time.perf_counter() - t0
        print(
            line(f"hybrid, {args.concurrency} callers", lat, f"  {len(lat) / wall:.0f} searches/s")
        )
    # The plans, for the median question.
    q = qs[len(qs) // 2]
    async with db.connection() as conn:
        planned = await search.keyword_params(conn, scope, q, 50)
        if planned is not None:
            print(f"  keyword leg plan for {q!r}:")
            print(await explain(conn, planned[0], *planned[1]))
        if keyword_only:
            return
        [vector] = await models.embed(ctx(tenant), DEFAULT_EMBEDDING_MODEL, [q])
        async with conn.transaction():
            await conn.execute("SET LOCAL hnsw.ef_search = 100")
            print("  vector leg plan (HNSW, ef_search 100):")
            print(
                await explain(
                    conn,
                    "SELECT c.chunk_id FROM rag.chunks c WHERE c.dims = 384"
                    " AND c.tenant_id = $1 AND c.collection_id = ANY($2::text[])"
                    " ORDER BY (c.embedding::vector(384)) <=> $3::vector(384) LIMIT 50",
                    tenant,
                    [coll],
                    vector_literal(vector),
                )
            )


async def main(args: argparse.Namespace) -> None:
    setup_logging("warning")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}; {os.cpu_count()} cores")
    started = time.perf_counter()
    server, built, stage = await rag_dataset.ensure(Path(args.data_dir), args.chunks, args.until)
    try:
        print(
            f"dataset: {args.chunks} chunks in {args.data_dir} "
            + (f"built in {built:.0f} s" if built is not None else "reused (fingerprint matches)")
        )
        if args.build_only:
            return
        t0 = time.perf_counter()
        await measure(args, server.url, keyword_only=stage != "done")
        print(
            f"\nsearch measurement {time.perf_counter() - t0:.0f} s;"
            f" total {time.perf_counter() - started:.0f} s"
        )
        print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--data-dir", default="/work/bench-data/rag-1m")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--baseline-queries", type=int, default=20)
    parser.add_argument(
        "--warmup", type=int, default=200, help="other questions served before measuring"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--until",
        choices=["indexed", "done"],
        default="done",
        help="build up to the GIN indexes only (then only the keyword legs are measured)",
    )
    parser.add_argument("--build-only", action="store_true")
    asyncio.run(main(parser.parse_args()))
