"""RAG Service endpoints and its durable indexing consumer.

``rag.*.request`` endpoints answer over NATS; ingestion jobs arrive on the JetStream
subject ``ingest.jobs.index`` (durable consumer ``rag-index``) and their stages go back
to the Data Ingestion Service as ``events.domain.ingestion.job`` events.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from nats.js import JetStreamContext
from pydantic import TypeAdapter, ValidationError

from bus import offload
from bus.client import Client
from bus.codec import Codec
from bus.context import child, new_id
from bus.errors import InvalidRequest, MeshError, NotFound, UpstreamError
from bus.jetstream import ConsumerSpec, JobConsumer, publish
from bus.patience import job_context, until_available
from bus.postgres import Database, create_database, migrate, migrations_of
from bus.sql import tenant_of
from bus.uploads import delete_object, read_object
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import cache, rag
from schemas.context import Context
from schemas.ingestion import (
    INDEX_SUBJECT,
    PROGRESS_SUBJECT,
    IndexJob,
    JobProgress,
    ProgressStage,
)
from schemas.locations import Span
from schemas.rag import (
    DEFAULT_EMBEDDING_MODEL,
    Chunk,
    Citation,
    Collection,
    CreateCollectionRequest,
    DeleteCollectionRequest,
    DeleteCollectionResponse,
    DeleteDocumentRequest,
    DeleteDocumentResponse,
    Document,
    DocumentDetail,
    GetCollectionRequest,
    GetDocumentRequest,
    IngestedDocument,
    IngestRequest,
    IngestResponse,
    ListCollectionsRequest,
    ListCollectionsResponse,
    ListDocumentsRequest,
    ListDocumentsResponse,
    QueryRequest,
    QueryResponse,
    ReindexDocumentRequest,
    ReindexDocumentResponse,
    SearchRequest,
    SearchResponse,
    SearchResult,
    UpdateDocumentRequest,
)
from workers.rag import answer as answers
from workers.rag.chunking import chunk_text
from workers.rag.llm import Models
from workers.rag.located import chunk_spans
from workers.rag.search import Scope, hydrate, keyword_leg, rrf, vector_leg
from workers.rag.store import (
    CollectionRow,
    RagStore,
    WriteResult,
    content_hash,
    location_of,
    search_text,
    spans_json,
    spans_of,
)

_log = structlog.get_logger(__name__)

VERSION = "0.1.0"
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
#: Reserved (schemas.cache.RESERVED_PREFIX): users cannot plant answers here.
QUERY_CACHE_NAMESPACE = "_rag.query"
QUERY_CACHE_TTL_S = 3600
CACHE_TIMEOUT_S = 1.0
MAX_ANSWER_TOKENS = 512

Progress = Callable[[ProgressStage], Awaitable[None]]
_SPANS = TypeAdapter(list[Span])


@dataclass
class IndexStats:
    """Where indexing time goes, per process (read by bench/bench_rag.py)."""

    documents: int = 0
    chunks: int = 0
    chunk_s: float = 0.0
    embed_s: float = 0.0
    write_s: float = 0.0


def cache_tag(collection_id: str) -> str:
    return f"_rag.col.{collection_id}"  # reserved, like the namespace


def _collection(row: CollectionRow) -> Collection:
    return Collection(
        collection_id=row.collection_id,
        name=row.name,
        embedding_model=row.embedding_model,
        dimensions=row.dimensions,
        metadata=row.metadata,
        document_count=row.document_count,
        chunk_count=row.chunk_count,
        created_at=row.created_at,
    )


def _document(r: Any) -> Document:
    return Document(
        document_id=r["document_id"],
        collection_id=r["collection_id"],
        source_id=r["source_id"],
        title=r["title"],
        metadata=r["metadata"],
        content_hash=r["content_hash"],
        chunk_count=r["chunk_count"],
        job_id=r["job_id"],
        object_name=r["object_name"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class Rag:
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
        self.js = js
        self.client = client
        self.models = Models(client)
        self.codec = codec or Codec()
        self.stopping = stopping or asyncio.Event()
        self.stats = IndexStats()

    # ------------------------------------------------------------ collections

    async def create_collection(self, req: CreateCollectionRequest, ctx: Context) -> Collection:
        model = req.embedding_model or DEFAULT_EMBEDDING_MODEL
        # The dimension comes from the model itself: one probe embedding.
        probe = await self.models.embed(ctx, model, ["dimension probe"])
        if not probe or not probe[0]:
            raise UpstreamError(f"embedding model {model!r} returned an empty vector")
        row = await self.store.create_collection(
            tenant_of(ctx), req.name, model, len(probe[0]), req.metadata
        )
        return _collection(row)

    async def get_collection(self, req: GetCollectionRequest, ctx: Context) -> Collection:
        return _collection(
            await self.store.collection(tenant_of(ctx), req.collection_id, counts=True)
        )

    async def list_collections(
        self, req: ListCollectionsRequest, ctx: Context
    ) -> ListCollectionsResponse:
        rows, cursor = await self.store.list_collections(tenant_of(ctx), req.limit, req.cursor)
        return ListCollectionsResponse(
            collections=[_collection(r) for r in rows], next_cursor=cursor
        )

    async def delete_collection(
        self, req: DeleteCollectionRequest, ctx: Context
    ) -> DeleteCollectionResponse:
        tenant = tenant_of(ctx)
        count, objects = await self.store.delete_collection(tenant, req.collection_id)
        for name in objects:
            await self._drop_object(tenant, name)
        await self._invalidate(ctx, [req.collection_id])
        return DeleteCollectionResponse(deleted=True, documents=count)

    # ------------------------------------------------------------ indexing

    async def _index(
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
            await self._drop_object(tenant, result.replaced_object)
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
                await self._index(
                    ctx,
                    collection,
                    source_id=doc.source_id,
                    title=doc.title,
                    text=doc.text,
                    metadata=doc.metadata,
                )
            )
        if any(d.status != "unchanged" for d in out):
            await self._invalidate(ctx, [req.collection_id])
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

            result = await self._index(
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
                await self._drop_object(tenant, job.spans_object)
            await self._drop_object(tenant, job.text_object)
            if result.status != "unchanged":
                await self._invalidate(actx, [job.collection_id])

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
            await self._drop_object(ctx.tenant, job.spans_object)
        await self._drop_object(ctx.tenant, job.text_object)

    # ------------------------------------------------------------ search and query

    async def _retrieve(
        self, ctx: Context, req: SearchRequest, collections: list[CollectionRow]
    ) -> tuple[list[SearchResult], dict[str, str | None]]:
        """The ranked results and each result chunk's document title (for an answer)."""
        tenant = tenant_of(ctx)
        ids = [c.collection_id for c in collections]
        use_vector = req.mode == "vector" or (req.mode == "hybrid" and req.vector_weight > 0)
        use_keyword = req.mode == "keyword" or (req.mode == "hybrid" and req.keyword_weight > 0)
        if use_vector and len({(c.embedding_model, c.dimensions) for c in collections}) > 1:
            raise InvalidRequest(
                "collections with different embedding models cannot be searched together"
                " in vector or hybrid mode"
            )
        leg = req.candidates or max(50, 4 * req.top_k)
        scope = Scope(tenant, ids, collections[0].dimensions, req.filters)
        vec: list[tuple[str, float]] = []
        kw: list[tuple[str, float]] = []

        async def vector() -> None:
            nonlocal vec
            [embedding] = await self.models.embed(ctx, collections[0].embedding_model, [req.query])
            vec, _ = await vector_leg(self.db, scope, embedding, leg)

        async def keyword() -> None:
            nonlocal kw
            kw = await keyword_leg(self.db, scope, req.query, leg)

        try:
            async with asyncio.TaskGroup() as tg:
                if use_vector:
                    tg.create_task(vector())
                if use_keyword:
                    tg.create_task(keyword())
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        if req.mode == "hybrid":
            ranked = rrf([(vec, req.vector_weight), (kw, req.keyword_weight)], req.rrf_k)
        else:
            ranked = vec if req.mode == "vector" else kw
        top = ranked[: req.top_k]
        rows = await hydrate(self.db, tenant, [cid for cid, _ in top])
        results = []
        titles: dict[str, str | None] = {}
        for cid, score in top:
            r = rows.get(cid)
            if r is None:  # deleted between the legs and now
                continue
            titles[cid] = r["title"]
            results.append(
                SearchResult(
                    document_id=r["document_id"],
                    source_id=r["source_id"],
                    chunk_id=cid,
                    score=score,
                    text=r["text"],
                    metadata=r["metadata"],
                    location=location_of(r["location"]),
                )
            )
        return results, titles

    async def search(self, req: SearchRequest, ctx: Context) -> SearchResponse:
        collections = await self.store.collections(tenant_of(ctx), req.collection_ids)
        results, _ = await self._retrieve(ctx, req, collections)
        return SearchResponse(results=results)

    async def query(self, req: QueryRequest, ctx: Context) -> QueryResponse:
        tenant = tenant_of(ctx)
        collections = await self.store.collections(tenant, req.collection_ids)
        key = hashlib.sha256(
            json.dumps(
                [
                    req.model_dump(exclude={"use_cache"}),
                    [(c.collection_id, c.version) for c in collections],
                ],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()
        if req.use_cache:
            cached = await self._cache_get(ctx, key)
            if cached is not None:
                return QueryResponse.model_validate({**cached, "cached": True})
        results, titles = await self._retrieve(
            ctx,
            SearchRequest(
                collection_ids=req.collection_ids,
                query=req.question,
                mode=req.mode,
                top_k=req.top_k,
                filters=req.filters,
            ),
            collections,
        )
        if not results:
            response = QueryResponse(answer=answers.NO_RESULTS_ANSWER, citations=[])
        else:
            response = await self._answer(ctx, req, results, titles)
        await self._cache_set(ctx, key, response, [c.collection_id for c in collections])
        return response

    async def _answer(
        self,
        ctx: Context,
        req: QueryRequest,
        results: list[SearchResult],
        titles: dict[str, str | None],
    ) -> QueryResponse:
        passages = [
            answers.Passage(
                number=i + 1,
                chunk_id=r.chunk_id,
                document_id=r.document_id,
                source_id=r.source_id,
                title=titles.get(r.chunk_id),
                text=r.text,
                where=r.location.label if r.location else None,
            )
            for i, r in enumerate(results)
        ]
        messages, used = await self._messages(ctx, req, passages)
        generated = await self.models.generate(ctx, req.model, messages, MAX_ANSWER_TOKENS)
        text = (generated.message.content or "").strip()
        target = answers.words(text) | answers.words(req.question)
        where = {r.chunk_id: r.location for r in results}
        citations = [
            Citation(
                document_id=p.document_id,
                source_id=p.source_id,
                chunk_id=p.chunk_id,
                quote=answers.best_quote(p.text, target),
                location=where.get(p.chunk_id),
            )
            for p in answers.cited_passages(text, used)
        ]
        return QueryResponse(answer=text, citations=citations, model=generated.model)

    async def _messages(
        self, ctx: Context, req: QueryRequest, passages: list[answers.Passage]
    ) -> tuple[list[dict[str, str]], list[answers.Passage]]:
        """The Prompt Service's context when it answers; otherwise built here."""
        assembled = await self.models.prompt_context(
            ctx,
            {
                "model": req.model,
                "budget_tokens": req.max_context_tokens + 256,
                "system_text": answers.SYSTEM_PROMPT,
                "passages": [
                    {"source_id": str(p.number), "text": answers.render_passage(p)}
                    for p in passages
                ],
                "query": req.question,
                "passages_intro": "Passages (cite them by their number, like [1]):",
            },
        )
        if assembled is not None:
            messages = [
                {"role": str(m.get("role")), "content": str(m.get("content") or "")}
                for m in assembled["messages"]
                if isinstance(m, dict)
            ]
            used_ids = assembled.get("passages_used")
            used = passages
            if isinstance(used_ids, list):
                used = [p for p in passages if str(p.number) in {str(u) for u in used_ids}]
            if messages and used:
                return messages, used
        used = answers.fit_passages(passages, req.max_context_tokens)
        return answers.local_messages(req.question, used), used

    # ------------------------------------------------------------ documents

    async def list_documents(
        self, req: ListDocumentsRequest, ctx: Context
    ) -> ListDocumentsResponse:
        rows, cursor = await self.store.list_documents(
            tenant_of(ctx), req.collection_id, req.source_id, req.limit, req.cursor
        )
        return ListDocumentsResponse(documents=[_document(r) for r in rows], next_cursor=cursor)

    async def get_document(self, req: GetDocumentRequest, ctx: Context) -> DocumentDetail:
        tenant = tenant_of(ctx)
        row = await self.store.document(tenant, req.document_id)
        chunks = await self.store.chunks_of(tenant, req.document_id) if req.include_chunks else []
        return DocumentDetail(
            **_document(row).model_dump(),
            chunks=[
                Chunk(
                    chunk_id=c["chunk_id"],
                    ord=c["ord"],
                    text=c["text"],
                    section=c["section"],
                    tokens=c["token_count"],
                    location=location_of(c["location"]),
                )
                for c in chunks
            ],
        )

    async def update_document(self, req: UpdateDocumentRequest, ctx: Context) -> Document:
        tenant = tenant_of(ctx)
        row, retitle = await self.store.update_document(
            tenant, req.document_id, req.title, req.metadata
        )
        if retitle:
            await self._reindex(ctx, req.document_id, title=req.title)
            row = await self.store.document(tenant, req.document_id)
        await self._invalidate(ctx, [row["collection_id"]])
        return _document(row)

    async def delete_document(
        self, req: DeleteDocumentRequest, ctx: Context
    ) -> DeleteDocumentResponse:
        tenant = tenant_of(ctx)
        row = await self.store.delete_document(tenant, req.document_id)
        if row["object_name"]:
            await self._drop_object(tenant, row["object_name"])
        await self._invalidate(ctx, [row["collection_id"]])
        return DeleteDocumentResponse(deleted=True)

    async def reindex_document(
        self, req: ReindexDocumentRequest, ctx: Context
    ) -> ReindexDocumentResponse:
        result = await self._reindex(ctx, req.document_id)
        return ReindexDocumentResponse(document_id=result.document_id, chunks=result.chunks)

    async def _reindex(
        self, ctx: Context, document_id: str, *, title: str | None = None
    ) -> IngestedDocument:
        tenant = tenant_of(ctx)
        row = await self.store.document(tenant, document_id)
        collection = await self.store.collection(tenant, row["collection_id"])
        result = await self._index(
            ctx,
            collection,
            source_id=row["source_id"],
            title=title if title is not None else row["title"],
            text=row["body"],
            metadata=_document(row).metadata,
            job_id=row["job_id"],
            force=True,
            spans=spans_of(row["spans"]),
        )
        await self._invalidate(ctx, [collection.collection_id])
        return result

    # ------------------------------------------------------------ cache and objects

    async def _cache_get(self, ctx: Context, key: str) -> dict[str, Any] | None:
        try:
            out = await self.client.call(
                cache.INTERNAL_GET,
                {"namespace": QUERY_CACHE_NAMESPACE, "key": key},
                child(ctx, timeout=CACHE_TIMEOUT_S),
            )
        except MeshError as exc:
            _log.info("query_cache_unavailable", code=exc.code)
            return None
        return out.value if out.hit and isinstance(out.value, dict) else None

    async def _cache_set(
        self, ctx: Context, key: str, response: QueryResponse, collection_ids: list[str]
    ) -> None:
        try:
            await self.client.call(
                cache.INTERNAL_SET,
                {
                    "namespace": QUERY_CACHE_NAMESPACE,
                    "key": key,
                    "value": response.model_dump(mode="json", exclude={"cached"}),
                    "ttl_seconds": QUERY_CACHE_TTL_S,
                    "tags": [cache_tag(c) for c in collection_ids],
                },
                child(ctx, timeout=CACHE_TIMEOUT_S),
            )
        except MeshError as exc:
            _log.info("query_cache_unavailable", code=exc.code)

    async def _invalidate(self, ctx: Context, collection_ids: list[str]) -> None:
        """Drop cached answers of changed collections. The cache key also carries each
        collection's version, so a missed invalidation costs memory, never a stale answer."""
        try:
            await self.client.call(
                cache.INTERNAL_INVALIDATE,
                {"tags": [cache_tag(c) for c in collection_ids]},
                child(ctx, timeout=CACHE_TIMEOUT_S),
            )
        except MeshError as exc:
            _log.info("query_cache_invalidate_failed", code=exc.code)

    async def _drop_object(self, tenant: str, name: str) -> None:
        try:
            await delete_object(self.js, name, tenant)
        except MeshError as exc:  # an orphaned file, never a failed request
            _log.warning("object_delete_failed", object=name, code=exc.code)


def build_worker(r: Rag, codec: Codec | None = None, max_concurrency: int = 64) -> Worker:
    return Worker(
        "rag",
        endpoints=[
            Endpoint(rag.QUERY, r.query),
            Endpoint(rag.CREATE_COLLECTION, r.create_collection),
            Endpoint(rag.GET_COLLECTION, r.get_collection),
            Endpoint(rag.LIST_COLLECTIONS, r.list_collections),
            Endpoint(rag.DELETE_COLLECTION, r.delete_collection),
            Endpoint(rag.INGEST, r.ingest),
            Endpoint(rag.SEARCH, r.search),
            Endpoint(rag.LIST_DOCUMENTS, r.list_documents),
            Endpoint(rag.GET_DOCUMENT, r.get_document),
            Endpoint(rag.UPDATE_DOCUMENT, r.update_document),
            Endpoint(rag.DELETE_DOCUMENT, r.delete_document),
            Endpoint(rag.REINDEX_DOCUMENT, r.reindex_document),
        ],
        version=VERSION,
        description="Collections, hybrid search and grounded answers on pgvector",
        codec=codec or Codec(),
        max_concurrency=max_concurrency,
    )


@asynccontextmanager
async def lifespan(env: WorkerEnv) -> AsyncIterator[Worker]:
    if not env.settings.database_url:
        raise RuntimeError("DATABASE_URL is not set")
    db = await create_database(env.settings.database_url, max_size=20)
    try:
        await migrate(db, "rag", migrations_of("workers.rag"))
        codec = Codec(env.settings.codec_type)
        stopping = asyncio.Event()
        service = Rag(db, env.js, env.client, codec=codec, stopping=stopping)
        consumer = JobConsumer(
            env.js,
            INDEX_CONSUMER,
            IndexJob,
            service.index_job,
            on_failed=service.index_failed,
            codec=codec,
        )
        # The pools stop after the consumer's in-flight jobs (the TaskGroup) finish.
        async with offload.using(env.settings), asyncio.TaskGroup() as tg:
            tg.create_task(consumer.run(stopping))
            try:
                yield build_worker(service, codec, min(env.settings.max_concurrency, 64))
            finally:
                stopping.set()
    finally:
        await db.close()
