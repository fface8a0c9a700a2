"""``rag.query``: retrieve, answer from the passages with citations, cache the answer.

The prompt and citation rules are in :mod:`workers.rag.answer`.
"""

from __future__ import annotations

import hashlib
import json

from bus.sql import tenant_of
from bus.worker import Endpoint
from schemas import rag
from schemas.context import Context
from schemas.rag import Citation, QueryRequest, QueryResponse, SearchRequest, SearchResult
from workers.rag import answer as answers
from workers.rag.effects import Effects
from workers.rag.llm import Models
from workers.rag.retrieval import Retriever
from workers.rag.store import RagStore

MAX_ANSWER_TOKENS = 512


class Answerer:
    def __init__(
        self, store: RagStore, models: Models, effects: Effects, retriever: Retriever
    ) -> None:
        self.store = store
        self.models = models
        self.effects = effects
        self.retriever = retriever

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(rag.QUERY, self.query)]

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
            cached = await self.effects.cache_get(ctx, key)
            if cached is not None:
                return QueryResponse.model_validate({**cached, "cached": True})
        results, titles = await self.retriever.retrieve(
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
        await self.effects.cache_set(ctx, key, response, [c.collection_id for c in collections])
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
