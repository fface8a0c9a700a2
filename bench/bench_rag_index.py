"""RAG indexing benchmark: the chunk store at a million chunks, and ingestion end to end
against the local MiniLM embedder's own rate, in one run.

1. **Store** — ``RagStore.write_document`` (the real write path: one transaction per
   document, binary vectors, chunks in statements of 256 rows) writing ``--write-chunks``
   new chunks (documents of ``--doc-chunks``, ``--writers`` at once as the index consumer
   runs them) into a copy of a database that already holds ``--base-chunks`` chunks
   (default 1,000,000; bench/rag_index_data.py builds it once under ``--data`` and every
   run copies it, so the base never grows). Vectors are random unit vectors, NOT
   embeddings (a million MiniLM embeddings would take days on this machine): for HNSW
   they are the worst case (no clusters), so its figure is a floor. Text is 60–170 words
   per chunk from a Zipf-like model over the MiniLM vocabulary (ordered roughly by
   frequency). Each figure is printed beside **main's write path** (vectors as text
   literals, the statements main runs, copied below) in the same run, and twice:
   * *without HNSW maintenance*: a 383-dimensional collection, which no HNSW index
     covers (HNSW indexes are partial, one per dimension) — every other index (primary
     key, unique ord, scope, GIN full text, GIN metadata) is maintained;
   * *with HNSW maintenance*: the 384-dimensional collection of the base, its HNSW
     index holding the base's chunks. The difference per chunk is HNSW's cost.
2. **Embedder** — the local MiniLM (``workers.gateway.local.LocalEmbedder``, the model the
   gateway serves) embedding exactly what RAG embeds for the end-to-end documents (the
   same chunking, title + section + text), in batches of 64, in this process, before and
   after the end-to-end phase (the machine's load moves; the mean is the baseline).
3. **End to end** — ``--docs`` documents (about 500 words, four sections) through the
   real workers in this process (gateway with the local embedder, cache, ingestion, RAG;
   embedded NATS and Redis; RAG writing into the same million-chunk database):
   ``ingestion.submit`` → parse → ``ingest.jobs.index`` → chunk, ``gateway.embed``,
   write → ``indexed``. Prints chunks/s and its ratio to the embedder's own rate, and
   RAG's summed embedding and database times.

Time: the first run builds the base — measured on the shared 2-core machine at load
10–14: the million rows in 23 minutes, the HNSW index of 100,000 in 5 minutes and of a
million in over an hour (``--no-hnsw-build`` skips it and the HNSW figure; end to end then
writes into an empty database). Later runs take about 5–11 minutes with the defaults
(copying the base about a minute, store 2–5 minutes, embedder and end to end 2–4 minutes:
the local embedder runs at 3–30 chunks/s depending on the load). Nothing is left
running; the copies are dropped at the end.

    .venv/bin/python bench/bench_rag_index.py [--base-chunks 1000000] [--write-chunks 20000]
        [--hnsw-chunks 2000] [--docs 40] [--data /work/bench-data/ragindex]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.gateway.settings import prefer_offline  # noqa: E402

prefer_offline()  # before anything imports litellm: no network at import

from tokenizers import Tokenizer  # noqa: E402

from bench import rag_index_data as base  # noqa: E402
from bench.ingest_wait import submit_and_wait  # noqa: E402
from bench.mesh_workers import answering, serve_workers  # noqa: E402
from bus.client import Client  # noqa: E402
from bus.context import new_context, new_id  # noqa: E402
from bus.postgres import Database, create_database, migrate, migrations_of  # noqa: E402
from bus.settings import Settings  # noqa: E402
from bus.sql import vector_literal  # noqa: E402
from bus.telemetry import setup_logging  # noqa: E402
from mesh.infra import embedded  # noqa: E402
from mesh.runner import bus_env  # noqa: E402
from schemas import rag  # noqa: E402
from workers.gateway.local import LocalEmbedder, model_file  # noqa: E402
from workers.rag import vectors  # noqa: E402
from workers.rag.chunking import Piece, chunk_text  # noqa: E402
from workers.rag.llm import EMBED_BATCH  # noqa: E402
from workers.rag.store import (  # noqa: E402
    TS_CONFIG,
    CollectionRow,
    RagStore,
    chunk_id,
    content_hash,
    location_json,
    search_text,
)

RUN_DB = "ragrun"
TENANT = base.TENANT


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (2 cores)"


# ---------------------------------------------------------------- text


class Words:
    """Zipf-like English: the MiniLM vocabulary's whole words in id order (BERT's
    vocabulary lists words roughly by frequency after its first 1,996 entries)."""

    def __init__(self, seed: int) -> None:
        tok = Tokenizer.from_file(str(model_file("minilm_tokenizer")))  # not the model
        ordered = sorted(tok.get_vocab().items(), key=lambda x: x[1])
        self.words = [w for w, i in ordered if i >= 1996 and w.isalpha()][:20000]
        ranks = np.arange(1, len(self.words) + 1)
        self.p = (1.0 / ranks**1.07) / (1.0 / ranks**1.07).sum()
        self.rng = np.random.default_rng(seed)

    def sentence(self, n: int) -> str:
        picks = self.rng.choice(len(self.words), size=n, p=self.p)
        words = [self.words[i] for i in picks]
        return " ".join(words).capitalize() + "."

    def chunk(self) -> str:
        n = int(self.rng.integers(60, 171))
        out, left = [], n
        while left > 0:
            k = min(left, int(self.rng.integers(8, 25)))
            out.append(self.sentence(k))
            left -= k
        return " ".join(out)

    def document(self, i: int) -> str:
        sections = []
        for s in range(4):
            body = " ".join(self.sentence(int(self.rng.integers(8, 25))) for _ in range(8))
            sections.append(f"## Part {s} of manual {i}\n\n{body}")
        return f"# Manual {i}\n\n" + "\n\n".join(sections)


def unit_vectors(n: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, dims)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ---------------------------------------------------------------- main's write path


async def main_write(
    db: Database,
    tenant: str,
    collection: CollectionRow,
    source_id: str,
    title: str,
    text: str,
    pieces: list[Piece],
    vecs: np.ndarray,
) -> None:
    """The statements main's ``RagStore.write_document`` runs for a new document (copied
    from main at 1770369: text vector literals, lock, select, insert, insert chunks,
    update, then the version bump on its own connection)."""
    cid = collection.collection_id
    digest = content_hash(title, text)
    async with db.transaction() as conn:
        await conn.fetchval(
            "SELECT 1 FROM rag.collections WHERE tenant_id = $1 AND collection_id = $2"
            " FOR KEY SHARE",
            tenant,
            cid,
        )
        await conn.fetchrow(
            "SELECT document_id, content_hash, object_name, chunk_count FROM rag.documents"
            " WHERE tenant_id = $1 AND collection_id = $2 AND source_id = $3 FOR UPDATE",
            tenant,
            cid,
            source_id,
        )
        document_id = new_id("doc")
        await conn.fetchval(
            "INSERT INTO rag.documents (tenant_id, collection_id, document_id,"
            " source_id, title, metadata, content_hash, body, chunk_count, job_id,"
            " object_name) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11)"
            " ON CONFLICT (tenant_id, collection_id, source_id) DO NOTHING"
            " RETURNING document_id",
            tenant,
            cid,
            document_id,
            source_id,
            title,
            {},
            digest,
            text,
            len(pieces),
            None,
            None,
        )
        lex = await conn.fetchval(
            "WITH ins AS (INSERT INTO rag.chunks (tenant_id, collection_id, document_id,"
            " chunk_id, ord, text, section, token_count, metadata, dims, embedding, tsv,"
            " lex_count, location)"
            " SELECT $1, $2, $3, u.chunk_id, u.ord, u.text, u.section, u.tokens, $4::jsonb, $5,"
            "   u.emb::vector, v.tsv,"
            "   (SELECT coalesce(sum(cardinality(x.positions)), 0) FROM unnest(v.tsv) x),"
            "   u.location::jsonb"
            " FROM unnest($6::text[], $7::int[], $8::text[], $9::text[], $10::int[],"
            "   $11::text[], $12::text[], $13::text[])"
            "   AS u(chunk_id, ord, text, section, tokens, emb, search, location)"
            f" CROSS JOIN LATERAL (SELECT to_tsvector('{TS_CONFIG}', u.search) AS tsv) v"
            " RETURNING lex_count) SELECT coalesce(sum(lex_count), 0) FROM ins",
            tenant,
            cid,
            document_id,
            {},
            collection.dimensions,
            [chunk_id(document_id, digest, i) for i in range(len(pieces))],
            list(range(len(pieces))),
            [p.text for p in pieces],
            [p.section for p in pieces],
            [p.tokens for p in pieces],
            [vector_literal(v) for v in vecs.tolist()],
            [search_text(title, p.section, p.text) for p in pieces],
            [location_json(p.location) for p in pieces],
        )
        await conn.execute(
            "UPDATE rag.documents SET title = $3, metadata = $4::jsonb,"
            " content_hash = $5, body = $6, chunk_count = $7, job_id = $8,"
            " object_name = coalesce($9, object_name), lex_total = $10, spans = $11::jsonb,"
            " updated_at = now() WHERE tenant_id = $1 AND document_id = $2",
            tenant,
            document_id,
            title,
            {},
            digest,
            text,
            len(pieces),
            None,
            None,
            int(lex),
            None,
        )
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE rag.collections SET version = version + 1, updated_at = now()"
            " WHERE tenant_id = $1 AND collection_id = $2",
            tenant,
            cid,
        )


# ---------------------------------------------------------------- 1. store


Doc = tuple[str, str, str, list[Piece], np.ndarray]


def make_docs(
    words: Words, chunks: int, per_doc: int, dims: int, tag: str, rng: np.random.Generator
) -> list[Doc]:
    docs = []
    for d in range(0, chunks, per_doc):
        n = min(per_doc, chunks - d)
        parts = [Piece(text=words.chunk(), section=f"Part {i}", tokens=150) for i in range(n)]
        text = "\n\n".join(p.text for p in parts)
        docs.append((f"{tag}-{d}", f"Manual {tag} {d}", text, parts, unit_vectors(n, dims, rng)))
    return docs


async def write_all(
    db: Database,
    store: RagStore,
    collection: CollectionRow,
    docs: list[Doc],
    writers: int,
    new: bool,
) -> float:
    queue: asyncio.Queue[Doc] = asyncio.Queue()
    for d in docs:
        queue.put_nowait(d)

    async def writer() -> None:
        while not queue.empty():
            source, title, text, parts, vecs = queue.get_nowait()
            if new:
                await store.write_document(
                    TENANT,
                    collection,
                    source_id=source,
                    title=title,
                    text=text,
                    digest=content_hash(title, text),
                    metadata={},
                    pieces=parts,
                    vectors=vecs,
                    job_id=None,
                    object_name=None,
                )
            else:
                await main_write(db, TENANT, collection, source, title, text, parts, vecs)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(writers):
            tg.create_task(writer())
    return time.perf_counter() - started


async def store_phase(url: str, args: argparse.Namespace, words: Words, indexed: bool) -> None:
    db = await create_database(url, max_size=args.writers + 2, init=vectors.register)
    rng = np.random.default_rng(3)
    try:
        store = RagStore(db)
        async with db.connection() as conn:
            total = await conn.fetchval("SELECT count(*) FROM rag.chunks")
            await conn.execute(
                "INSERT INTO rag.collections (tenant_id, collection_id, name, embedding_model,"
                " dimensions) VALUES ($1, 'col_383', 'no-hnsw', 'synthetic', 383)",
                TENANT,
            )
            hnsw = await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'rag'"
                " AND indexname LIKE 'chunks_hnsw_%'"
            )
        with_hnsw = await store.collection(TENANT, base.COLLECTION)
        without = await store.collection(TENANT, "col_383")
        print(
            f"store: {total} chunks in rag.chunks; HNSW indexes {[r[0] for r in hnsw]};"
            f" {args.writers} writers, documents of {args.doc_chunks} chunks; {load()}"
        )
        print("  (synthetic random unit vectors: the worst case for HNSW)")
        cases = [("without HNSW maintenance (383 dims)", without, args.write_chunks)]
        if indexed:
            cases.append(("with HNSW maintenance (384 dims)", with_hnsw, args.hnsw_chunks))
        else:
            print("  the base has no HNSW index (--no-hnsw-build): HNSW maintenance not measured")
        rates: dict[tuple[str, bool], float] = {}
        # main's statements on main's schema first, then this branch's migrations and path.
        for new in (False, True):
            if new:
                applied = await migrate(db, "rag", migrations_of("workers.rag"))
                await db.pool.expire_connections()
                print(f"  migrations of this branch applied: {', '.join(applied) or 'none'}")
            for label, coll, n in cases:
                tag = f"{'new' if new else 'main'}{coll.dimensions}"
                docs = make_docs(words, n, args.doc_chunks, coll.dimensions, tag, rng)
                wall = await write_all(db, store, coll, docs, args.writers, new)
                rates[label, new] = n / wall
        for label, _, _ in cases:
            old, now = rates[label, False], rates[label, True]
            print(
                f"  {label:<36} main {old:8.0f} chunks/s   this branch"
                f" {now:8.0f} chunks/s  ({now / old:.2f}x)"
            )
        if not indexed:
            return
        bare, full = rates[cases[0][0], True], rates[cases[1][0], True]
        print(
            f"  HNSW maintenance at {total} chunks: {1000 / full - 1000 / bare:.2f} ms per chunk"
            f" (the write without it {1000 / bare:.2f} ms); {load()}"
        )
    finally:
        await db.close()


# ---------------------------------------------------------------- 2. embedder


def embedder_rate(embedder: LocalEmbedder, texts: list[str]) -> float:
    embedder.embed(texts[:4])  # warm
    started = time.perf_counter()
    for s in range(0, len(texts), EMBED_BATCH):
        embedder.embed(texts[s : s + EMBED_BATCH])
    return len(texts) / (time.perf_counter() - started)


# ---------------------------------------------------------------- 3. end to end


def ctx(timeout: float = 120.0):  # type: ignore[no-untyped-def]
    return new_context(TENANT, timeout=timeout)


async def e2e_phase(
    url: str, payload: list[dict[str, Any]], expected_chunks: int
) -> tuple[float, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp, embedded(Path(tmp), postgres=False) as infra:
        assert infra.nats and infra.redis
        settings = Settings(  # type: ignore[call-arg]
            nats_url=infra.nats.url, database_url=url, redis_url=infra.redis.url
        )
        async with bus_env(settings, "bench-rag-index") as env, AsyncExitStack() as stack:
            workers = await serve_workers(
                env, stack, ["cache", "ingestion", "rag"], real_gateway=True
            )
            indexer = answering(workers["rag"], "ingest")
            client = Client(env.nc)
            # The collection's probe embedding loads the model before the clock starts.
            cid = (await client.call(rag.CREATE_COLLECTION, {"name": "e2e"}, ctx())).collection_id
            # One document first, timed apart: it starts the parsing and chunking process
            # pools, so the figure is the steady state.
            await submit_and_wait(client, TENANT, cid, [{**payload[0], "source_id": "warm-up"}], 1)
            before = dict(vars(indexer.stats))
            started = time.perf_counter()
            await submit_and_wait(client, TENANT, cid, payload, 1 + len(payload))
            wall = time.perf_counter() - started
            stats = {k: v - before[k] for k, v in vars(indexer.stats).items()}
            if stats["chunks"] != expected_chunks:
                print(f"  (RAG indexed {stats['chunks']} chunks, {expected_chunks} expected)")
            return wall, stats


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace, pg: Any) -> None:
    t0 = time.perf_counter()
    indexed = await base.ensure(pg, args.base_chunks, hnsw=not args.no_hnsw_build)
    conn = await asyncpg.connect(pg.url, command_timeout=None)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {RUN_DB}")
        c0 = time.perf_counter()
        await conn.execute(f"CREATE DATABASE {RUN_DB} TEMPLATE {base.BASE_DB} STRATEGY FILE_COPY")
        print(f"copy of the base for this run: {time.perf_counter() - c0:.0f} s")
    finally:
        await conn.close()
    url = base.db_url(pg, RUN_DB)
    try:
        words = Words(seed=1)
        await store_phase(url, args, words, indexed)

        docs = [(f"m-{i}", f"Manual {i}", words.document(i)) for i in range(args.docs)]
        texts = []
        for _source, title, text in docs:
            texts += [search_text(title, p.section, p.text) for p in chunk_text(text)]
        payload = [{"source_id": s, "title": t, "text": x} for s, t, x in docs]
        embedder = await asyncio.to_thread(LocalEmbedder)
        rate1 = await asyncio.to_thread(embedder_rate, embedder, texts)
        print(
            f"embedder: local MiniLM (int8 ONNX, 2 threads), {len(texts)} chunks in batches of"
            f" {EMBED_BATCH}: {rate1:.1f} chunks/s; {load()}"
        )
        e2e_url = url
        if not indexed:
            # RAG's create_collection would build the missing HNSW index over the whole
            # base first (CREATE INDEX IF NOT EXISTS): end to end goes to an empty database.
            conn = await asyncpg.connect(pg.url)
            try:
                await conn.execute(f"CREATE DATABASE {RUN_DB}_e2e")
            finally:
                await conn.close()
            e2e_url = base.db_url(pg, f"{RUN_DB}_e2e")
            print("end to end writes into an empty database (the base has no HNSW index)")
        wall, stats = await e2e_phase(e2e_url, payload, len(texts))
        e2e = stats["chunks"] / wall
        rate2 = await asyncio.to_thread(embedder_rate, embedder, texts)
        own = (rate1 + rate2) / 2
        print(f"embedder again after end to end: {rate2:.1f} chunks/s; mean {own:.1f} chunks/s")
        print(
            f"end to end: {args.docs} documents, {stats['chunks']:.0f} chunks in {wall:.1f} s"
            f" (ingestion.submit -> indexed, real workers, local MiniLM via gateway.embed)"
        )
        print(
            f"  throughput {e2e:.1f} chunks/s = {e2e / own:.2f}x the embedder's own rate"
            f" (goal >= 0.8x); {load()}"
        )
        n = max(stats["chunks"], 1)
        print(
            f"  RAG's time, summed over jobs in flight: embedding {stats['embed_s']:.1f} s"
            f" ({1000 * stats['embed_s'] / n:.1f} ms/chunk) | database {stats['write_s']:.2f} s"
            f" ({1000 * stats['write_s'] / n:.1f} ms/chunk) | chunking {stats['chunk_s']:.2f} s"
        )
    finally:
        conn = await asyncpg.connect(pg.url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {RUN_DB} WITH (FORCE)")
            await conn.execute(f"DROP DATABASE IF EXISTS {RUN_DB}_e2e WITH (FORCE)")
        finally:
            await conn.close()
    print(f"total bench time {time.perf_counter() - t0:.0f} s")


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=base.DEFAULT_DATA)
    parser.add_argument("--base-chunks", type=int, default=1_000_000)
    parser.add_argument("--write-chunks", type=int, default=20_000)
    parser.add_argument("--hnsw-chunks", type=int, default=2_000)
    parser.add_argument("--doc-chunks", type=int, default=8)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--docs", type=_positive, default=40)
    parser.add_argument(
        "--no-hnsw-build",
        action="store_true",
        help="use the base as it is: if its HNSW index is not built, skip that figure",
    )
    args = parser.parse_args()
    setup_logging("warning")
    print(f"machine: {os.cpu_count()} cores; {load()}")
    pg = base.server(args.data)
    pg.start()
    try:
        asyncio.run(run(args, pg))
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
