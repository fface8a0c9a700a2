"""Indexing: ``rag.ingest`` (inline documents) and the durable ``ingest.jobs.index`` consumer.

Ingestion jobs arrive on the JetStream subject ``ingest.jobs.index`` (durable consumer
``rag-index``) and their stages go back to the Data Ingestion Service as
``events.domain.ingestion.job`` events. Each document is chunked off the event loop
(bus/offload.py), embedded through the gateway and written by :class:`RagStore`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from nats.js import JetStreamContext
from pydantic import TypeAdapter, ValidationError

from bus import offload
from bus.codec import Codec
from bus.context import new_id
from bus.errors import InvalidRequest, NotFound, UpstreamError
from bus.jetstream import ConsumerSpec, publish
from bus.patience import job_context, until_available
from bus.sql import tenant_of
from bus.uploads import read_object
from bus.worker import Endpoint
from schemas import rag
from schemas.context import Context
from schemas.ingestion import (
    INDEX_SUBJECT,
    PROGRESS_SUBJECT,
    IndexJob,
    JobProgress,
    ProgressStage,
)
from schemas.locations import Span
from schemas.rag import IngestedDocument, IngestRequest, IngestResponse
from workers.rag.chunking import chunk_text
from workers.rag.effects import Effects
from workers.rag.llm import Models
from workers.rag.located import chunk_spans
from workers.rag.store import (
    CollectionRow,
    RagStore,
    WriteResult,
    content_hash,
    search_text,
    spans_json,
)

_log = structlog.get_logger("workers.rag.service")

#: The indexing consumer. Dependency outages are waited out inside a delivery
#: (bus.patience); these retries cover the rest (a crash mid-job, a worker stopping).
INDEX_CONSUMER = ConsumerSpec(
    stream="INGEST",
    durable="rag-index",
    filter_subject=INDEX_SUBJECT,
    max_deliver=6,
    backoff=(2.0, 10.0, 30.0, 60.0, 120.0),
    ack_wait=15.0,
    batch=4,
)
#: Deadline of one indexing attempt (chunking, embedding every chunk, the write).
INDEX_TIMEOUT_S = 600.0
#: Largest parsed text RAG reads back from the object store.
MAX_PARSED_BYTES = 64 * 1024 * 1024
#: Time budget of chunking one document in an off-loop process (bus/offload.py).
CHUNK_BUDGET_S = 60.0

Progress = Callable[[ProgressStage], Awaitable[None]]
_SPANS = TypeAdapter(list[Span])


@dataclass
class IndexStats:
    """Where indexing time goes, per process (read by bench/bench_rag.py and
    bench/bench_rag_index.py)."""

    documents: int = 0
    chunks: int = 0
    chunk_s: float = 0.0
    embed_s: float = 0.0
    write_s: float = 0.0


class Indexer:
    def __init__(
        self,
        store: RagStore,
        models: Models,
        effects: Effects,
        js: JetStreamContext,
        *,
        codec: Codec,
        stopping: asyncio.Event,
    ) -> None:
        self.store = store
        self.models = models
        self.effects = effects
        self.js = js
        self.codec = codec
        self.stopping = stopping
        self.stats = IndexStats()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(rag.INGEST, self.ingest)]

    async def index(
        self,
        ctx: Context,
        collection: CollectionRow,
        *,
        source_id: str,
        title: str | None,
        text: str,
        metadata: dict[str, Any],
        job_id: str | None = None,
        object_name: str | None = None,
        progress: Progress | None = None,
        force: bool = False,
        spans: list[Span] | None = None,
    ) -> IngestedDocument:
        tenant = tenant_of(ctx)
        # Locations are part of the content: the same text newly located (a file indexed
        # before locations existed, submitted again) is an update, not "unchanged".
        located = "\x00" + (spans_json(spans) or "") if spans else ""
        digest = content_hash(title, text + located)
        existing = await self.store.find_document(tenant, collection.collection_id, source_id)
        if existing is not None and existing["content_hash"] == digest and not force:
            await self.store.refresh_unchanged(
                tenant, collection.collection_id, existing["document_id"], metadata, job_id
            )
            return IngestedDocument(
                document_id=existing["document_id"],
                source_id=source_id,
                status="unchanged",
                chunks=existing["chunk_count"],
            )
        if progress:
            await progress("chunking")
        started = time.perf_counter()
        args = (chunk_spans, text, spans) if spans else (chunk_text, text)
        pieces = await offload.run(
            *args,
            budget=CHUNK_BUDGET_S,
            key=tenant,
            what="chunking the document",
            pool="rag",
        )
        if not pieces:
            raise InvalidRequest(f"document {source_id!r} has no text to index")
        chunked = time.perf_counter()
        if progress:
            await progress("embedding")
        embed_started = time.perf_counter()
        vectors = await self.models.embed(
            ctx,
            collection.embedding_model,
            [search_text(title, p.section, p.text) for p in pieces],
        )
        embedded = time.perf_counter()
        if any(len(v) != collection.dimensions for v in vectors):
            raise UpstreamError(
                f"embedding model {collection.embedding_model!r} no longer returns "
                f"{collection.dimensions}-dimensional vectors"
            )
        result: WriteResult = await self.store.write_document(
            tenant,
            collection,
            source_id=source_id,
            title=title,
            text=text,
            digest=digest,
            metadata=metadata,
            pieces=pieces,
            vectors=vectors,
            job_id=job_id,
            object_name=object_name,
            force=force,
            spans=spans,
        )
        stats = self.stats
        stats.documents += 1
        stats.chunks += len(pieces)
        stats.chunk_s += chunked - started
        stats.embed_s += embedded - embed_started
        stats.write_s += time.perf_counter() - embedded
        if result.replaced_object:
            await self.effects.drop_object(tenant, result.replaced_object)
        return IngestedDocument(
            document_id=result.document_id,
            source_id=source_id,
            status=result.status,
            chunks=result.chunks,
        )

    async def ingest(self, req: IngestRequest, ctx: Context) -> IngestResponse:
        tenant = tenant_of(ctx)
        collection = await self.store.collection(tenant, req.collection_id)
        out = []
        for doc in req.documents:
            out.append(
                await self.index(
                    ctx,
                    collection,
                    source_id=doc.source_id,
                    title=doc.title,
                    text=doc.text,
                    metadata=doc.metadata,
                )
            )
        if any(d.status != "unchanged" for d in out):
            await self.effects.invalidate(ctx, [req.collection_id])
        return IngestResponse(documents=out)

    async def index_job(self, job: IndexJob, ctx: Context) -> None:
        """``ingest.jobs.index``: chunk, embed and store one parsed document."""
        tenant = tenant_of(ctx)
        run = new_id()[:12]

        async def report(stage: ProgressStage, **fields: Any) -> None:
            event = JobProgress(job_id=job.job_id, stage=stage, at=datetime.now(UTC), **fields)
            await publish(
                self.js,
                PROGRESS_SUBJECT,
                event,
                ctx,
                msg_id=f"{job.job_id}:{stage}:{run}",
                codec=self.codec,
            )

        async def attempt() -> None:
            actx = job_context(ctx, INDEX_TIMEOUT_S)
            try:
                _, data = await read_object(
                    self.js, job.text_object, tenant, max_bytes=MAX_PARSED_BYTES
                )
            except NotFound:
                # Indexed by an earlier delivery that could not ack: report it again.
                done = await self.store.document_for_job(tenant, job.job_id)
                if done is None:
                    raise
                await report("indexed", document_id=done["document_id"], chunks=done["chunk_count"])
                return
            spans = await self._spans(tenant, job.spans_object) if job.spans_object else None
            collection = await self.store.collection(tenant, job.collection_id)
            stages: list[ProgressStage] = []

            async def progress(stage: ProgressStage) -> None:
                await report(stage, started=not stages)
                stages.append(stage)

            result = await self.index(
                actx,
                collection,
                source_id=job.source_id,
                title=job.title,
                text=data.decode("utf-8", errors="replace"),
                metadata=job.metadata,
                job_id=job.job_id,
                object_name=job.object_name,
                progress=progress,
                spans=spans,
            )
            if not stages:
                await report("chunking", started=True)
            await report("indexed", document_id=result.document_id, chunks=result.chunks)
            if job.spans_object:
                await self.effects.drop_object(tenant, job.spans_object)
            await self.effects.drop_object(tenant, job.text_object)
            if result.status != "unchanged":
                await self.effects.invalidate(actx, [job.collection_id])

        await until_available(attempt, stopping=self.stopping, what=f"index {job.job_id}")

    async def _spans(self, tenant: str, name: str) -> list[Span]:
        _, data = await read_object(self.js, name, tenant, max_bytes=MAX_PARSED_BYTES)
        try:
            return _SPANS.validate_json(data)
        except ValidationError:
            raise InvalidRequest("the job's locations (spans) are not valid") from None

    async def index_failed(self, job: IndexJob | None, ctx: Context | None, reason: str) -> None:
        """A job that will not be retried: tell ingestion, drop its parsed text."""
        if job is None or ctx is None or not ctx.tenant:
            _log.error("index_job_unreadable", reason=reason)
            return
        event = JobProgress(job_id=job.job_id, stage="failed", error=reason, at=datetime.now(UTC))
        await publish(
            self.js,
            PROGRESS_SUBJECT,
            event,
            ctx,
            msg_id=f"{job.job_id}:failed",
            codec=self.codec,
        )
        if job.spans_object:
            await self.effects.drop_object(ctx.tenant, job.spans_object)
        await self.effects.drop_object(ctx.tenant, job.text_object)
