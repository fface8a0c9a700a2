"""RAG benchmark: ingestion throughput and hybrid search latency at 100k chunks.

One process, embedded NATS/Postgres (fsync off, as the test session)/Redis in a temporary
directory, the ingestion and RAG workers in-process.

1. Ingestion: ``--docs`` generated documents (about 500 words each, several sections)
   submitted inline through ``ingestion.submit`` and followed until every job is
   ``indexed``; prints documents/s and chunks/s, and splits RAG's indexing time into
   chunking, embedding (the ``gateway.embed`` calls) and database writes.
2. Search: ``--chunks`` synthetic chunks (default 100,000) inserted straight into
   ``rag.chunks`` by SQL — random unit vectors generated inside Postgres and text from a
   Zipf-like synthetic vocabulary, NOT real embeddings: embedding 100k chunks with the
   local CPU model would take far longer than this bench may run. The HNSW index is
   built once afterwards. Then ``--queries`` hybrid ``rag.search`` requests (the query is
   embedded through the gateway for real) report p50/p99 end to end, with the embed call
   and the two Postgres legs timed separately; plus the same for a small tenant (exact
   scan path) sharing the table.

Uses the real Gateway Service (local embedder) when ``mesh.registry.WORKERS`` has
"gateway", else the test-only fake gateway (hashed words and trigrams), and says which.

    .venv/bin/python bench/bench_rag.py [--docs 200] [--chunks 100000] [--queries 100]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest_wait import submit_and_wait  # noqa: E402
from bench.mesh_workers import answering, serve_workers  # noqa: E402
from bus.client import Client  # noqa: E402
from bus.context import new_context  # noqa: E402
from bus.postgres import create_database  # noqa: E402
from bus.settings import Settings  # noqa: E402
from bus.telemetry import setup_logging  # noqa: E402
from mesh.infra import embedded  # noqa: E402
from mesh.registry import WORKERS  # noqa: E402
from mesh.runner import bus_env  # noqa: E402
from schemas import rag  # noqa: E402
from workers.rag.search import Scope, keyword_leg, vector_leg  # noqa: E402

TENANT = "bench"
WORDS = [
    "pump",
    "valve",
    "seal",
    "pressure",
    "flow",
    "turbine",
    "blade",
    "bearing",
    "shaft",
    "motor",
    "sensor",
    "filter",
    "gasket",
    "torque",
    "bolt",
    "flange",
    "pipe",
    "coolant",
]


def ctx(tenant: str = TENANT, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    return new_context(tenant, timeout=timeout)


def document(i: int, rng: random.Random) -> str:
    sections = []
    for s in range(4):
        body = " ".join(rng.choice(WORDS) + ("." if rng.random() < 0.1 else "") for _ in range(125))
        sections.append(f"## Section {s} of manual {i}\n\n{body}")
    return f"# Manual {i}\n\n" + "\n\n".join(sections)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def ingest_phase(client: Client, indexer: Any, docs: int) -> None:
    cid = (await client.call(rag.CREATE_COLLECTION, {"name": "ingest"}, ctx())).collection_id
    rng = random.Random(1)
    payload = [{"source_id": f"m-{i}", "text": document(i, rng)} for i in range(docs)]
    before = dict(vars(indexer.stats))
    started = time.perf_counter()
    await submit_and_wait(client, TENANT, cid, payload, docs)
    wall = time.perf_counter() - started
    stats = {k: v - before[k] for k, v in vars(indexer.stats).items()}
    chunks = stats["chunks"]
    print(f"ingestion: {docs} documents, {chunks} chunks in {wall:.1f} s (submit -> indexed)")
    print(f"  throughput          {docs / wall:8.1f} documents/s  {chunks / wall:8.1f} chunks/s")
    print(
        f"  RAG indexing time   chunking {stats['chunk_s']:.2f} s | embedding "
        f"{stats['embed_s']:.2f} s ({chunks / max(stats['embed_s'], 1e-9):.0f} chunks/s) | "
        f"database {stats['write_s']:.2f} s ({chunks / max(stats['write_s'], 1e-9):.0f} chunks/s)"
    )
    print(
        "  (RAG times are summed over the jobs in flight, 4 at a time; the rest of the wall"
        " time is parsing, JetStream hand-offs and progress events)"
    )


async def load_chunks(database_url: str, cid: str, tenant: str, n: int, docs: int) -> float:
    """Insert n synthetic chunks (random unit vectors, Zipf-like words) straight by SQL."""
    # A plain connection: the service pool's 10 s command timeout is for requests.
    conn = await asyncpg.connect(database_url)
    per_doc = max(1, n // docs)
    started = time.perf_counter()
    try:
        if True:
            await conn.execute(
                "INSERT INTO rag.documents (tenant_id, collection_id, document_id, source_id,"
                " content_hash, body, chunk_count, lex_total)"
                " SELECT $1, $2, $3 || g, 'src-' || g, 'x', '', $4, $4 * 40"
                " FROM generate_series(0, $5 - 1) g",
                tenant,
                cid,
                f"doc_{tenant}_",
                per_doc,
                docs,
            )
            await conn.execute(
                "INSERT INTO rag.chunks (tenant_id, collection_id, document_id, chunk_id, ord,"
                " text, token_count, metadata, dims, embedding, tsv, lex_count)"
                " SELECT $1, $2, $3 || (g / $4), $5 || g, g % $4, t.text, 40, '{}', 384,"
                "   v.vec, to_tsvector('english', t.text), 40"
                " FROM generate_series(0, $6 - 1) g"
                " CROSS JOIN LATERAL (SELECT"
                "   string_agg('w' || floor(exp(random() * ln(5000)))::int, ' ') AS text"
                "   FROM generate_series(1, 40) WHERE g >= 0) t"
                " CROSS JOIN LATERAL (SELECT (SELECT array_agg(x / nrm)::vector FROM unnest(a) x)"
                "   AS vec FROM (SELECT a, sqrt((SELECT sum(y * y) FROM unnest(a) y)) AS nrm"
                "   FROM (SELECT array(SELECT random() - 0.5 FROM generate_series(1, 384)"
                "   WHERE g >= 0) AS a) s) u) v",
                tenant,
                cid,
                f"doc_{tenant}_",
                per_doc,
                f"chk_{tenant}_",
                n,
            )
    finally:
        await conn.close()
    return time.perf_counter() - started


async def search_phase(
    settings: Settings, client: Client, indexer: Any, chunks: int, queries: int
) -> None:
    big = await client.call(rag.CREATE_COLLECTION, {"name": "big"}, ctx())
    small = await client.call(rag.CREATE_COLLECTION, {"name": "small"}, ctx("small"))
    assert settings.database_url
    db = await create_database(settings.database_url)
    try:
        async with db.connection() as conn:
            await conn.execute("DROP INDEX IF EXISTS rag.chunks_hnsw_384")
        load_s = await load_chunks(
            settings.database_url, big.collection_id, TENANT, chunks, chunks // 100
        )
        await load_chunks(settings.database_url, small.collection_id, "small", 1000, 10)
        print(
            f"search: {chunks} synthetic chunks + 1000 of a small tenant loaded in {load_s:.1f} s"
        )
        started = time.perf_counter()
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("SET maintenance_work_mem = '1GB'")
            await conn.execute(
                "CREATE INDEX chunks_hnsw_384 ON rag.chunks USING hnsw"
                " ((embedding::vector(384)) vector_cosine_ops) WHERE dims = 384"
            )
            await conn.execute("ANALYZE rag.chunks")
        finally:
            await conn.close()
        print(
            "  HNSW index (m=16, ef_construction=64) built in "
            f"{time.perf_counter() - started:.1f} s"
        )
        rng = random.Random(7)
        texts = [
            " ".join(f"w{int(rng.expovariate(1 / 60)) + 1}" for _ in range(4))
            for _ in range(queries)
        ]
        for name, tenant, coll in (
            ("large tenant (HNSW)", TENANT, big),
            ("small tenant (exact)", "small", small),
        ):
            scope = Scope(tenant, [coll.collection_id], 384, None)
            total, embed, vec, kw = [], [], [], []
            plans: set[str] = set()
            for q in texts[:5]:  # warm up: connections, prepared statements, caches
                await client.call(
                    rag.SEARCH,
                    {"collection_ids": [coll.collection_id], "query": q},
                    ctx(tenant),
                )
            for q in texts:
                t0 = time.perf_counter()
                await client.call(
                    rag.SEARCH,
                    {"collection_ids": [coll.collection_id], "query": q, "top_k": 10},
                    ctx(tenant),
                )
                total.append(time.perf_counter() - t0)
                # The same work in parts, to show where the time goes.
                t0 = time.perf_counter()
                [vector] = await indexer.models.embed(ctx(tenant), coll.embedding_model, [q])
                t1 = time.perf_counter()
                _, plan = await vector_leg(db, scope, vector, 50)
                t2 = time.perf_counter()
                await keyword_leg(db, scope, q, 50)
                t3 = time.perf_counter()
                embed.append(t1 - t0)
                vec.append(t2 - t1)
                kw.append(t3 - t2)
                plans.add(plan)
            print(f"  hybrid rag.search, {name}, {queries} queries, top_k=10, 50 per leg:")
            print(
                f"    end to end   p50 {ms(pct(total, 50))}  p99 {ms(pct(total, 99))}"
                f"  mean {ms(statistics.mean(total))}"
            )
            print(f"    embed call   p50 {ms(pct(embed, 50))}  p99 {ms(pct(embed, 99))}")
            print(
                f"    vector leg   p50 {ms(pct(vec, 50))}  p99 {ms(pct(vec, 99))}"
                f"  plan {'/'.join(sorted(plans))}"
            )
            print(f"    keyword leg  p50 {ms(pct(kw, 50))}  p99 {ms(pct(kw, 99))}")
    finally:
        await db.close()


async def main(args: argparse.Namespace) -> None:
    setup_logging("warning")
    real = "gateway" in WORKERS
    print(
        "embedder: "
        + (
            "the Gateway Service's local embedder (real model)"
            if real
            else "TEST-ONLY fake gateway (hashed words + trigrams): this build has no"
            " Gateway Service"
        )
    )
    with tempfile.TemporaryDirectory() as tmp, embedded(Path(tmp), durable=False) as infra:
        assert infra.nats and infra.postgres and infra.redis
        settings = Settings(  # type: ignore[call-arg]
            nats_url=infra.nats.url, database_url=infra.postgres.url, redis_url=infra.redis.url
        )
        async with bus_env(settings, "bench-rag") as env, AsyncExitStack() as stack:
            workers = await serve_workers(
                env, stack, ["cache", "ingestion", "rag"], real_gateway=real
            )
            indexer = answering(workers["rag"], "ingest")  # its stats and models
            client = Client(env.nc)
            started = time.perf_counter()
            await ingest_phase(client, indexer, args.docs)
            await search_phase(settings, client, indexer, args.chunks, args.queries)
            print(f"total bench time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    asyncio.run(main(parser.parse_args()))
