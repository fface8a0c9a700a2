"""RAG Service: the worker composed from one module per resource.

* :mod:`workers.rag.collections` — ``rag.*_collection``
* :mod:`workers.rag.indexing` — ``rag.ingest`` and the durable ``ingest.jobs.index``
  consumer (``rag-index``) that reports stages back to the Data Ingestion Service
* :mod:`workers.rag.retrieval` — ``rag.search`` (legs in :mod:`workers.rag.search`)
* :mod:`workers.rag.answering` — ``rag.query`` (prompt rules in :mod:`workers.rag.answer`)
* :mod:`workers.rag.documents` — ``rag.*_document``
* :mod:`workers.rag.effects` — the answer cache and the object store, shared by all
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from nats.js import JetStreamContext

from bus import offload
from bus.client import Client
from bus.codec import Codec
from bus.jetstream import JobConsumer
from bus.lifespan import background, database
from bus.postgres import Database
from bus.worker import Worker, WorkerEnv
from schemas.ingestion import IndexJob
from workers.rag import vectors
from workers.rag.answering import Answerer
from workers.rag.collections import Collections
from workers.rag.documents import Documents
from workers.rag.effects import Effects
from workers.rag.indexing import INDEX_CONSUMER, Indexer, IndexStats
from workers.rag.llm import Models
from workers.rag.retrieval import Retriever
from workers.rag.store import RagStore

VERSION = "0.1.0"

#: Heap pages a bitmap heap scan asks the kernel for ahead of reading them. Both keyword
#: statements (bounded frequency counts, candidate scoring) are bitmap heap scans over
#: rows scattered through the table; Postgres 16's default of 1 reads them one at a time,
#: so a page outside shared buffers costs a full storage round trip each (measured at
#: 1M chunks: docs/services/rag.md, "Search at scale"). PostgreSQL 18 defaults to 16;
#: SSD and cloud volumes serve dozens of reads at once.
IO_CONCURRENCY = 64


async def session(conn: asyncpg.Connection) -> None:
    """Every RAG connection: pgvector's binary codec; custom plans for every statement;
    read-ahead for bitmap scans.

    Custom plans: asyncpg prepares each statement once per connection, and after five
    executions Postgres may switch to a generic plan (``plan_cache_mode = auto``) that
    cannot see the question's lexemes or the tenant's size. For the keyword leg at 1M
    chunks that plan ANDs the lexeme's bitmap with the tenant's whole ``chunks_scope``
    bitmap (1M rows, ~100 ms) instead of filtering the few thousand matching rows (a
    search went from ~25 to ~180 ms at p50 once a connection's plan flipped). Planning
    these statements costs well under a millisecond.
    """
    await vectors.register(conn)
    await conn.execute("SET plan_cache_mode = force_custom_plan")
    try:
        await conn.execute(f"SET effective_io_concurrency = {IO_CONCURRENCY}")
    except asyncpg.PostgresError:  # a platform without posix_fadvise accepts only 0
        pass


class Rag:
    """The service's parts, wired once; each part serves its resource's endpoints."""

    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        client: Client,
        *,
        codec: Codec | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.db = db
        self.store = RagStore(db)
        self.models = Models(client)
        self.codec = codec or Codec()
        self.stopping = stopping or asyncio.Event()
        self.effects = Effects(client, js)
        self.collections = Collections(self.store, self.models, self.effects)
        self.indexer = Indexer(
            self.store, self.models, self.effects, js, codec=self.codec, stopping=self.stopping
        )
        self.retriever = Retriever(db, self.store, self.models)
        self.answerer = Answerer(self.store, self.models, self.effects, self.retriever)
        self.documents = Documents(self.store, self.effects, self.indexer)

    @property
    def stats(self) -> IndexStats:
        return self.indexer.stats


def build_worker(r: Rag, codec: Codec | None = None, max_concurrency: int = 64) -> Worker:
    return Worker(
        "rag",
        endpoints=[
            *r.answerer.endpoints(),
            *r.collections.endpoints(),
            *r.indexer.endpoints(),
            *r.retriever.endpoints(),
            *r.documents.endpoints(),
        ],
        version=VERSION,
        description="Collections, hybrid search and grounded answers on pgvector",
        codec=codec or Codec(),
        max_concurrency=max_concurrency,
    )


@asynccontextmanager
async def lifespan(env: WorkerEnv) -> AsyncIterator[Worker]:
    pool = database(env.settings, "rag", "workers.rag", max_size=20, init=session)
    async with pool as db:
        codec = Codec(env.settings.codec_type)
        stopping = asyncio.Event()
        service = Rag(db, env.js, env.client, codec=codec, stopping=stopping)
        consumer = JobConsumer(
            env.js,
            INDEX_CONSUMER,
            IndexJob,
            service.indexer.index_job,
            on_failed=service.indexer.index_failed,
            codec=codec,
        )
        # The pools stop after the consumer's in-flight jobs finish.
        async with offload.using(env.settings), background(stopping, consumer.run):
            yield build_worker(service, codec, min(env.settings.max_concurrency, 64))
