"""A persistent synthetic RAG dataset for search benchmarks (default 1,000,000 chunks).

Text comes from a word-frequency model, not a toy vocabulary: every chunk mixes English
words drawn by their real frequency (the ``wordfreq`` package's Zipf list, top 30,000
words) with words of its document's topic (one of ``TOPICS`` topics, each a few hundred
mid-frequency words with their own Zipf weights), so common words match most chunks and
topic words a few percent, as in a company's documents. Each document has a title made of
topic words; its chunks are indexed with the title (``search_text``), as RAG does.

Vectors are SYNTHETIC (384-d, clustered: the topic's centroid plus noise, unit length),
not embeddings of the text: embedding a million chunks with the local CPU model would
take hours. They exercise HNSW like real embeddings of clustered documents do.

The data lives in a Postgres (pgserver) data directory under ``--data-dir`` (default
/work/bench-data/rag-1m/) that later runs reuse. ``FINGERPRINT`` (the RAG migrations'
text, the generator version and the size) is stored in the database; a directory built
for another schema or generator is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import time
from importlib import resources
from pathlib import Path

import asyncpg
import numpy as np

from bus.postgres import create_database, migrate, migrations_of
from mesh.infra import PostgresServer
from schemas.rag import DEFAULT_EMBEDDING_MODEL

GENERATOR_VERSION = "4"
TENANT = "bench"
SMALL_TENANT = "small"
COLLECTION = "col_bench_big"
SMALL_COLLECTION = "col_bench_small"
DIMS = 384
TOPICS = 2000
TOPIC_WORDS = 300
CHUNKS_PER_DOC = 10
WORDS_PER_CHUNK = 90
TOPIC_SHARE = 0.3
BATCH = 50_000
SMALL_CHUNKS = 1000


class BenchPostgres(PostgresServer):
    """The embedded Postgres with memory sized for a million chunks: what a search reads
    (heap 3.9 GB, HNSW 2.0 GB, GIN 0.2 GB at 1M chunks) fits in shared buffers, as on a
    production server. With 3 GB, half of a new question's page reads missed them and cost
    a system call or a storage read each (docs/services/rag.md, "Search at scale").
    Shared memory is touched, so taken from the machine, only as pages are read."""

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index("shared_buffers=128MB")
        cmd[at] = "shared_buffers=7GB"
        return cmd + [
            "-c",
            "maintenance_work_mem=5GB",
            "-c",
            "effective_cache_size=8GB",
            "-c",
            "max_wal_size=8GB",
            "-c",
            "checkpoint_timeout=30min",
        ]


def fingerprint(chunks: int) -> str:
    h = hashlib.sha256(f"gen{GENERATOR_VERSION}:{chunks}:{DIMS}:{TOPICS}".encode())
    folder = resources.files("workers.rag") / "migrations"
    for f in sorted(folder.iterdir(), key=lambda f: f.name):
        if f.name.endswith(".sql"):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


class Vocabulary:
    def __init__(self, seed: int = 11) -> None:
        import wordfreq

        rng = np.random.default_rng(seed)
        words = [w for w in wordfreq.top_n_list("en", 30000) if w.isalpha() and len(w) > 1]
        self.words = np.array(words, dtype=object)
        freq = np.array([wordfreq.word_frequency(w, "en") for w in words])
        self.p = freq / freq.sum()
        # Topic words: mid-frequency words (ranks 1,000..30,000), each topic its own set.
        mid = np.arange(1000, len(words))
        self.topics = np.stack([rng.choice(mid, TOPIC_WORDS, replace=False) for _ in range(TOPICS)])
        weights = 1.0 / np.arange(1, TOPIC_WORDS + 1)
        self.topic_p = weights / weights.sum()
        self.centroids = rng.standard_normal((TOPICS, DIMS)).astype(np.float32)

    def batch(
        self, rng: np.random.Generator, topics: np.ndarray, n_words: int
    ) -> tuple[list[str], np.ndarray]:
        """Texts and unit vectors of one chunk per entry of ``topics`` (vectorised)."""
        n = len(topics)
        k = int(n_words * TOPIC_SHARE)
        glob = rng.choice(len(self.words), size=(n, n_words - k), p=self.p)
        local = self.topics[topics[:, None], rng.choice(TOPIC_WORDS, size=(n, k), p=self.topic_p)]
        picks = np.concatenate([glob, local], axis=1)
        picks = rng.permuted(picks, axis=1)
        texts = [" ".join(row) for row in self.words[picks]]
        vecs = self.centroids[topics] + 0.8 * rng.standard_normal((n, DIMS)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        return texts, vecs


async def _load(
    conn: asyncpg.Connection,
    vocab: Vocabulary,
    tenant: str,
    collection: str,
    chunks: int,
    seed: int,
    log: bool,
) -> None:
    rng = np.random.default_rng(seed)
    await conn.set_type_codec(
        "vector", schema="public", encoder=bytes, decoder=bytes, format="binary"
    )
    await conn.execute(
        "CREATE UNLOGGED TABLE IF NOT EXISTS bench_stage (document_id text, chunk_id text,"
        " ord int, title text, text text, embedding vector)"
    )
    await conn.execute("TRUNCATE bench_stage")
    started = time.perf_counter()
    done = 0
    doc_rows = io.StringIO()
    while done < chunks:
        n = min(BATCH, chunks - done)
        ids = np.arange(done, done + n)
        docs_of = ids // CHUNKS_PER_DOC
        topics = (docs_of * 7919 % TOPICS).astype(np.int64)
        texts, vecs = vocab.batch(rng, topics, WORDS_PER_CHUNK)
        firsts = np.flatnonzero(ids % CHUNKS_PER_DOC == 0)
        title_texts, _ = vocab.batch(rng, topics[firsts], 4)
        titles: dict[int, str] = {}
        for at, t in zip(firsts, title_texts, strict=True):
            d = int(docs_of[at])
            titles[d] = t.title()
            doc_rows.write(
                f"{tenant}\t{collection}\tdoc_{tenant}_{d}\tsrc-{d}\t{titles[d]}\tx\t\t"
                f"{CHUNKS_PER_DOC}\n"
            )
        # pgvector's binary form: dimensions, a reserved 0, then big-endian float4s.
        raw = vecs.astype(">f4").tobytes()
        head = struct.pack(">HH", DIMS, 0)
        step = DIMS * 4
        records = [
            (
                f"doc_{tenant}_{d}",
                f"chk_{tenant}_{i}",
                int(i % CHUNKS_PER_DOC),
                titles[int(d)],  # BATCH is a multiple of CHUNKS_PER_DOC
                text + ".",
                head + raw[k * step : (k + 1) * step],
            )
            for k, (i, d, text) in enumerate(zip(ids, docs_of, texts, strict=True))
        ]
        await conn.copy_records_to_table(
            "bench_stage",
            records=records,
            columns=["document_id", "chunk_id", "ord", "title", "text", "embedding"],
        )
        done += n
        if log and done % (BATCH * 10) == 0:
            elapsed = time.perf_counter() - started
            print(f"    generated {done} chunks ({elapsed:.0f} s)", flush=True)
    await conn.copy_to_table(
        "documents",
        schema_name="rag",
        source=io.BytesIO(doc_rows.getvalue().encode()),
        columns=[
            "tenant_id",
            "collection_id",
            "document_id",
            "source_id",
            "title",
            "content_hash",
            "body",
            "chunk_count",
        ],
    )
    # The chunk as RAG indexes it: title + text in the tsvector (store.search_text).
    await conn.execute(
        "INSERT INTO rag.chunks (tenant_id, collection_id, document_id, chunk_id, ord, text,"
        " token_count, metadata, dims, embedding, tsv, lex_count)"
        " SELECT $1, $2, s.document_id, s.chunk_id, s.ord, s.text, 120, '{}', $3, s.embedding,"
        "   v.tsv, (SELECT coalesce(sum(cardinality(x.positions)), 0) FROM unnest(v.tsv) x)"
        " FROM bench_stage s"
        " CROSS JOIN LATERAL (SELECT to_tsvector('english', s.title || E'\\n' || s.text) AS tsv) v",
        tenant,
        collection,
        DIMS,
    )
    await conn.execute(
        "UPDATE rag.documents d SET lex_total = s.lex FROM (SELECT document_id,"
        " sum(lex_count) AS lex FROM rag.chunks WHERE tenant_id = $1 GROUP BY document_id) s"
        " WHERE d.tenant_id = $1 AND d.document_id = s.document_id",
        tenant,
    )
    await conn.execute("DROP TABLE bench_stage")


STAGES = ("loaded", "indexed", "done")


async def _set_stage(conn: asyncpg.Connection, stage: str, chunks: int) -> None:
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS public.bench_fingerprint (value text NOT NULL,"
        " stage text NOT NULL)"
    )
    await conn.execute("DELETE FROM public.bench_fingerprint")
    await conn.execute(
        "INSERT INTO public.bench_fingerprint VALUES ($1, $2)", fingerprint(chunks), stage
    )


async def build(url: str, chunks: int, stage: str | None, until: str = "done") -> None:
    """Build (or resume after ``stage``) up to ``until``: rows, then the btree and GIN
    indexes, then HNSW — each step recorded, so an interrupted build resumes."""
    conn = await asyncpg.connect(url, command_timeout=None)
    try:
        await conn.execute("SET maintenance_work_mem = '5GB'")
        await conn.execute("SET max_parallel_maintenance_workers = 2")
        if stage is None:
            db = await create_database(url)
            try:
                await migrate(db, "rag", migrations_of("workers.rag"))
            finally:
                await db.close()
            for name in ("chunks_hnsw_384", "chunks_tsv", "chunks_scope", "chunks_metadata"):
                await conn.execute(f"DROP INDEX IF EXISTS rag.{name}")
            for tenant, coll in ((TENANT, COLLECTION), (SMALL_TENANT, SMALL_COLLECTION)):
                await conn.execute(
                    "INSERT INTO rag.collections (tenant_id, collection_id, name,"
                    " embedding_model, dimensions) VALUES ($1, $2, $3, $4, $5)",
                    tenant,
                    coll,
                    coll,
                    DEFAULT_EMBEDDING_MODEL,
                    DIMS,
                )
            vocab = Vocabulary()
            t0 = time.perf_counter()
            await _load(conn, vocab, TENANT, COLLECTION, chunks, 1, True)
            await _load(conn, vocab, SMALL_TENANT, SMALL_COLLECTION, SMALL_CHUNKS, 2, False)
            print(f"  rows generated and loaded in {time.perf_counter() - t0:.0f} s", flush=True)
            stage = "loaded"
            await _set_stage(conn, stage, chunks)
        if stage == "loaded" and STAGES.index(until) >= 1:
            t1 = time.perf_counter()
            await conn.execute(
                "CREATE INDEX IF NOT EXISTS chunks_scope ON rag.chunks (tenant_id, collection_id)"
            )
            await conn.execute(
                "CREATE INDEX IF NOT EXISTS chunks_metadata ON rag.chunks"
                " USING gin (metadata jsonb_path_ops)"
            )
            await conn.execute(
                "CREATE INDEX IF NOT EXISTS chunks_tsv ON rag.chunks USING gin (tsv)"
            )
            await conn.execute("VACUUM ANALYZE rag.chunks")
            await conn.execute("VACUUM ANALYZE rag.documents")
            print(f"  btree + GIN indexes built in {time.perf_counter() - t1:.0f} s", flush=True)
            stage = "indexed"
            await _set_stage(conn, stage, chunks)
        if stage == "indexed" and until == "done":
            t2 = time.perf_counter()
            await conn.execute("DROP INDEX IF EXISTS rag.chunks_hnsw_384")
            await conn.execute(
                "CREATE INDEX chunks_hnsw_384 ON rag.chunks USING hnsw"
                " ((embedding::vector(384)) vector_cosine_ops) WHERE dims = 384"
            )
            await conn.execute("ANALYZE rag.chunks")
            took = time.perf_counter() - t2
            print(f"  HNSW index (m=16, ef_construction=64) built in {took:.0f} s", flush=True)
            await _set_stage(conn, "done", chunks)
    finally:
        await conn.close()


async def stored_stage(url: str, chunks: int) -> tuple[str | None, bool]:
    """(the stage reached, whether a dataset of another fingerprint is there)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT value, stage FROM public.bench_fingerprint LIMIT 1")
    except asyncpg.UndefinedTableError:
        return None, False
    finally:
        await conn.close()
    if row is None:
        return None, False
    if row["value"] != fingerprint(chunks):
        return None, True
    return str(row["stage"]), False


async def ensure(
    data_dir: Path, chunks: int, until: str = "done"
) -> tuple[BenchPostgres, float | None, str]:
    """A running Postgres over the dataset, built (or resumed) now up to ``until`` when
    needed; the build time in seconds (None when nothing had to be built) and the stage
    reached. The caller stops the server."""
    root = data_dir / "postgres"
    existed = (root / "pgdata" / "PG_VERSION").exists()
    server = BenchPostgres(root, durable=False)
    server.start()
    try:
        stage, stale = await stored_stage(server.url, chunks)
        if stage is not None and STAGES.index(stage) >= STAGES.index(until):
            return server, None, stage
        if stale or (existed and stage is None):
            print(f"  dataset in {data_dir} is stale or incomplete: rebuilding", flush=True)
            server.stop()
            shutil.rmtree(root)
            server = BenchPostgres(root, durable=False)
            server.start()
        what = "building" if stage is None else f"resuming (after {stage!r})"
        print(f"{what} {chunks} chunks into {data_dir}; later runs reuse it", flush=True)
        started = time.perf_counter()
        await build(server.url, chunks, stage, until)
        return server, time.perf_counter() - started, until
    except BaseException:
        server.stop()
        raise
