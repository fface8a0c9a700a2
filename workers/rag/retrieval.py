"""``rag.search``: the vector and keyword legs run concurrently, fused by weighted RRF."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import structlog

from bus.errors import InvalidRequest
from bus.postgres import Database
from bus.sql import tenant_of
from bus.worker import Endpoint
from schemas import rag
from schemas.context import Context
from schemas.rag import SearchRequest, SearchResponse, SearchResult
from workers.rag import timings
from workers.rag.llm import Models
from workers.rag.search import Scope, hydrate, keyword_leg, rrf, vector_leg
from workers.rag.store import CollectionRow, RagStore, location_of

_log = structlog.get_logger(__name__)


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class Retriever:
    def __init__(self, db: Database, store: RagStore, models: Models) -> None:
        self.db = db
        self.store = store
        self.models = models
        #: Called with each search's stage times (seconds; workers/rag/timings.py).
        self.observer: Callable[[dict[str, float]], None] | None = None

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(rag.SEARCH, self.search)]

    async def retrieve(
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
        scope = Scope(
            tenant,
            ids,
            collections[0].dimensions,
            req.filters,
            tuple(c.version for c in collections),
        )
        vec: list[tuple[str, float]] = []
        kw: list[tuple[str, float]] = []

        async def vector() -> None:
            nonlocal vec
            with timings.stage("embed"):
                [embedding] = await self.models.embed(
                    ctx, collections[0].embedding_model, [req.query]
                )
            with timings.stage("vector"):
                vec, _ = await vector_leg(self.db, scope, embedding, leg)

        async def keyword() -> None:
            nonlocal kw
            with timings.stage("keyword"):
                kw = await keyword_leg(self.db, scope, req.query, leg)

        try:
            with timings.stage("legs"):
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
        with timings.stage("hydrate"):
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
                    collection_id=r["collection_id"],
                    title=r["title"],
                )
            )
        return results, titles

    async def search(self, req: SearchRequest, ctx: Context) -> SearchResponse:
        # Stages are timed only when someone reads them (debug log, an observer).
        debug = _log.is_enabled_for(logging.DEBUG)
        record = timings.collect() if debug or self.observer is not None else None
        t0 = time.perf_counter()
        with timings.stage("collections"):
            collections = await self.store.collections(tenant_of(ctx), req.collection_ids)
        results, _ = await self.retrieve(ctx, req, collections)
        if record is not None:
            record["handler"] = time.perf_counter() - t0
            if debug:
                _log.debug(
                    "rag_search_timings",
                    **{k: v if k.endswith(".n") else round(v * 1000, 2) for k, v in record.items()},
                )
            if self.observer is not None:
                self.observer(record)
        return SearchResponse(results=results)
