"""The Agent Service's calls to other services, all over the bus.

Gateway (generate, stream, embed, count tokens), RAG (search), Prompt (render) and Cache
(get, set) are reached by subject only; the service names come from
:class:`~workers.agent.settings.AgentConfig` so any worker answering the same contracts
can stand in (tests run a scripted one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from bus.client import Client
from bus.context import child
from bus.errors import MeshError
from schemas import cache, gateway, prompt, rag
from schemas.context import Context
from schemas.gateway import (
    AssistantMessage,
    FunctionCall,
    GenerateRequest,
    GenerateResponse,
    ToolCall,
    Usage,
)
from schemas.prompt import PromptRenderResponse
from schemas.rag import SearchRequest, SearchResponse
from workers.agent.settings import AgentConfig

_log = structlog.get_logger(__name__)

#: Reserved (schemas.cache.RESERVED_PREFIX): users cannot plant run results here.
CACHE_NAMESPACE = "_agent"
#: Optional calls get a short leash: a slow cache or counter must not eat the run's time.
CACHE_TIMEOUT_S = 2.0
COUNT_TIMEOUT_S = 5.0
#: Called with each text fragment while a streamed generation arrives.
OnToken = Callable[[str], Awaitable[None]]


class Remote:
    def __init__(self, client: Client, config: AgentConfig) -> None:
        self.client = client
        self.config = config
        gw, cs = config.gateway_service, config.cache_service
        self._generate = gateway.GENERATE.served_as(gw)
        self._stream = gateway.STREAM.served_as(gw)
        self._embed = gateway.EMBED.served_as(gw)
        self._count = gateway.COUNT_TOKENS.served_as(gw)
        self._search = rag.SEARCH.served_as(config.rag_service)
        self._render = prompt.RENDER.served_as(config.prompt_service)
        self._cache_get = cache.INTERNAL_GET.served_as(cs)
        self._cache_set = cache.INTERNAL_SET.served_as(cs)
        self._cache_invalidate = cache.INTERNAL_INVALIDATE.served_as(cs)

    async def generate(self, req: GenerateRequest, ctx: Context) -> GenerateResponse:
        return await self.client.call(
            self._generate,
            req,
            ctx,
        )

    async def stream(
        self, req: GenerateRequest, ctx: Context, on_token: OnToken
    ) -> GenerateResponse:
        """A streamed generation, put back together as the generate answer would be."""
        content: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        usage = Usage()
        cost = 0.0
        model = req.model or self.config.default_model
        async for chunk in self.client.stream(self._stream, req, ctx):
            if chunk.model:
                model = chunk.model
            if chunk.delta.content:
                content.append(chunk.delta.content)
                await on_token(chunk.delta.content)
            for part in chunk.delta.tool_calls or ():
                call = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
                if part.id:
                    call["id"] = part.id
                if part.function is not None:
                    call["name"] += part.function.name or ""
                    call["arguments"] += part.function.arguments or ""
            if chunk.finish_reason:
                finish = chunk.finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.cost is not None:
                cost = chunk.cost
        tool_calls = [
            ToolCall(
                id=c["id"] or f"call_{i}",
                function=FunctionCall(name=c["name"], arguments=c["arguments"] or "{}"),
            )
            for i, c in sorted(calls.items())
        ]
        return GenerateResponse(
            model=model,
            message=AssistantMessage(
                content="".join(content) or None, tool_calls=tool_calls or None
            ),
            finish_reason=finish or "stop",
            usage=usage,
            cost=cost,
        )

    async def embed(self, texts: list[str], ctx: Context) -> list[list[float]]:
        out = await self.client.call(
            self._embed,
            {
                "model": self.config.embed_model,
                "texts": texts,
                "dimensions": self.config.embed_dimensions,
            },
            ctx,
        )
        if len(out.vectors) != len(texts) or any(
            len(v) != self.config.embed_dimensions for v in out.vectors
        ):
            from bus.errors import UpstreamError

            raise UpstreamError(f"embeddings must have {self.config.embed_dimensions} dimensions")
        return out.vectors

    async def count_tokens(self, model: str, texts: list[str], ctx: Context) -> list[int] | None:
        """Tokens per text, or ``None`` when the gateway cannot say (the caller estimates)."""
        try:
            out = await self.client.call(
                self._count,
                {"model": model, "texts": texts},
                child(ctx, timeout=COUNT_TIMEOUT_S),
            )
        except MeshError as exc:
            _log.warning("count_tokens_unavailable", error=exc.code)
            return None
        if len(out.counts) != len(texts):
            return None
        return out.counts

    async def rag_search(self, req: SearchRequest, ctx: Context) -> SearchResponse:
        return await self.client.call(
            self._search,
            req,
            ctx,
        )

    async def render_prompt(self, payload: dict[str, Any], ctx: Context) -> PromptRenderResponse:
        return await self.client.call(
            self._render,
            payload,
            ctx,
        )

    async def cache_get(self, key: str, ctx: Context) -> Any | None:
        """The cached value, or ``None`` on a miss or when the cache is unreachable."""
        try:
            out = await self.client.call(
                self._cache_get,
                {"namespace": CACHE_NAMESPACE, "key": key},
                child(ctx, timeout=CACHE_TIMEOUT_S),
            )
        except MeshError as exc:  # a cache is an optimisation: never fail a run for it
            _log.warning("cache_get_failed", error=exc.code)
            return None
        return out.value if out.hit else None

    async def cache_set(self, key: str, value: Any, tags: list[str], ctx: Context) -> None:
        try:
            await self.client.call(
                self._cache_set,
                {
                    "namespace": CACHE_NAMESPACE,
                    "key": key,
                    "value": value,
                    "ttl_seconds": self.config.cache_ttl_seconds,
                    "tags": tags,
                },
                child(ctx, timeout=CACHE_TIMEOUT_S),
            )
        except MeshError as exc:
            _log.warning("cache_set_failed", error=exc.code)

    async def cache_invalidate(self, tag: str, ctx: Context) -> None:
        try:
            await self.client.call(
                self._cache_invalidate,
                {"tags": [tag]},
                child(ctx, timeout=CACHE_TIMEOUT_S),
            )
        except MeshError as exc:
            _log.warning("cache_invalidate_failed", error=exc.code)
