"""The base data of bench/bench_rag_index.py: a Postgres holding N chunks, kept between runs.

Built once under ``--data`` (default ``/work/bench-data/ragindex``, outside the repo) as the
database ``ragbase``: RAG's own migrations, one collection of 384-dimensional chunks,
``N`` synthetic chunks generated inside Postgres (random unit vectors — NOT embeddings:
embedding a million chunks with the local CPU model would take days here — and text of
80 words drawn from a Zipf-like vocabulary of 20,000 words), then the HNSW index built
once (m=16, ef_construction=64, as the migration declares it) — the long part: over an
hour on the shared 2-core machine under load; ``--no-hnsw`` stops after the rows. Each
bench run copies it (``CREATE DATABASE ... TEMPLATE ragbase``) and drops the copy
afterwards, so runs never grow or age the base.

    .venv/bin/python bench/rag_index_data.py [--data DIR] [--chunks 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus.postgres import create_database, migrate, migrations_of  # noqa: E402
from mesh.infra import PostgresServer  # noqa: E402

BASE_DB = "ragbase"
TENANT = "bench"
COLLECTION = "col_base"
DEFAULT_DATA = Path("/work/bench-data/ragindex")
#: Rows per generating statement (progress is printed after each).
STEP = 50_000
CHUNKS_PER_DOC = 10


def server(data: Path) -> PostgresServer:
    """The bench's Postgres (fsync off, like the test session), on its own data directory."""
    return PostgresServer(data / "postgres", durable=False)


def db_url(pg: PostgresServer, name: str) -> str:
    return pg.url.rsplit("/", 1)[0] + "/" + name


async def state(pg: PostgresServer) -> tuple[int, bool]:
    """(chunks the base holds, whether its HNSW index is built); (0, False) if none."""
    conn = await asyncpg.connect(pg.url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", BASE_DB):
            return 0, False
    finally:
        await conn.close()
    conn = await asyncpg.connect(db_url(pg, BASE_DB))
    try:
        if not await conn.fetchval("SELECT to_regclass('public.bench_meta') IS NOT NULL"):
            return 0, False
        row = await conn.fetchrow("SELECT chunks, hnsw FROM bench_meta")
        return (int(row["chunks"]), bool(row["hnsw"])) if row else (0, False)
    finally:
        await conn.close()


async def build_rows(pg: PostgresServer, chunks: int) -> None:
    started = time.perf_counter()
    conn = await asyncpg.connect(pg.url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {BASE_DB}")
        await conn.execute(f"CREATE DATABASE {BASE_DB}")
    finally:
        await conn.close()
    db = await create_database(db_url(pg, BASE_DB))
    try:
        await migrate(db, "rag", migrations_of("workers.rag"))
    finally:
        await db.close()
    conn = await asyncpg.connect(db_url(pg, BASE_DB), command_timeout=None)
    try:
        await conn.execute("DROP INDEX rag.chunks_hnsw_384")  # built once, afterwards
        await conn.execute(
            "INSERT INTO rag.collections (tenant_id, collection_id, name, embedding_model,"
            " dimensions) VALUES ($1, $2, 'base', 'local-embed', 384)",
            TENANT,
            COLLECTION,
        )
        for start in range(0, chunks, STEP):
            n = min(STEP, chunks - start)
            await conn.execute(
                "INSERT INTO rag.documents (tenant_id, collection_id, document_id, source_id,"
                " content_hash, body, chunk_count, lex_total)"
                " SELECT $1, $2, 'doc_b' || g, 'src-' || g, 'x', '', $3, $3 * 60"
                " FROM generate_series($4::int, $5::int) g",
                TENANT,
                COLLECTION,
                CHUNKS_PER_DOC,
                start // CHUNKS_PER_DOC,
                (start + n) // CHUNKS_PER_DOC - 1,
            )
            await conn.execute(
                "INSERT INTO rag.chunks (tenant_id, collection_id, document_id, chunk_id, ord,"
                " text, token_count, metadata, dims, embedding, tsv, lex_count)"
                " SELECT $1, $2, 'doc_b' || (g / $3), 'chk_b' || g, g % $3, t.text, 80, '{}',"
                "   384, v.vec, to_tsvector('english', t.text), 60"
                " FROM generate_series($4::int, $5::int) g"
                " CROSS JOIN LATERAL (SELECT"
                "   string_agg('w' || floor(exp(random() * ln(20000)))::int, ' ') AS text"
                "   FROM generate_series(1, 80) WHERE g >= 0) t"
                " CROSS JOIN LATERAL (SELECT (SELECT array_agg(x / nrm)::vector FROM unnest(a) x)"
                "   AS vec FROM (SELECT a, sqrt((SELECT sum(y * y) FROM unnest(a) y)) AS nrm"
                "   FROM (SELECT array(SELECT random() - 0.5 FROM generate_series(1, 384)"
                "   WHERE g >= 0) AS a) s) u) v",
                TENANT,
                COLLECTION,
                CHUNKS_PER_DOC,
                start,
                start + n - 1,
            )
            print(f"  base: {start + n} chunks ({time.perf_counter() - started:.0f} s)", flush=True)
        await conn.execute("ANALYZE rag.chunks")
        await conn.execute(
            "CREATE TABLE bench_meta (chunks bigint NOT NULL, hnsw boolean NOT NULL)"
        )
        await conn.execute("INSERT INTO bench_meta VALUES ($1, false)", chunks)
    finally:
        await conn.close()
    print(f"  base: {chunks} chunks written in {time.perf_counter() - started:.0f} s", flush=True)


async def build_hnsw(pg: PostgresServer) -> None:
    """The HNSW index over the base's vectors (m=16, ef_construction=64, as migrated)."""
    conn = await asyncpg.connect(db_url(pg, BASE_DB), command_timeout=None)
    try:
        t0 = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '3GB'")
        await conn.execute("SET max_parallel_maintenance_workers = 1")
        await conn.execute(
            "CREATE INDEX IF NOT EXISTS chunks_hnsw_384 ON rag.chunks USING hnsw"
            " ((embedding::vector(384)) vector_cosine_ops) WHERE dims = 384"
        )
        await conn.execute("UPDATE bench_meta SET hnsw = true")
        print(f"  base: HNSW built in {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        await conn.close()


async def ensure(pg: PostgresServer, chunks: int, hnsw: bool = True) -> bool:
    """The base with ``chunks`` chunks, and its HNSW index unless ``hnsw`` is False (an
    index built earlier is kept). Returns whether the base has the HNSW index."""
    have, indexed = await state(pg)
    if have != chunks:
        print(f"base data: writing {chunks} chunks (once; later runs reuse them)", flush=True)
        await build_rows(pg, chunks)
        indexed = False
    else:
        built = "built" if indexed else "not built"
        print(f"base data: {have} chunks kept from an earlier run, HNSW {built}")
    if hnsw and not indexed:
        print("base data: building the HNSW index (once)", flush=True)
        await build_hnsw(pg)
        indexed = True
    return indexed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--no-hnsw", action="store_true", help="write the rows only")
    args = parser.parse_args()
    pg = server(args.data)
    pg.start()
    try:
        asyncio.run(ensure(pg, args.chunks, hnsw=not args.no_hnsw))
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
