"""Carrying out tool calls that the policy allowed: one function per built-in kind.

Each built-in re-checks its own limits on the final arguments (granted collections, the
tenant's allow-list and the address policy) whatever the model asked for; a refusal
raises :class:`~workers.agent.tools.ToolRefused`, a failure
:class:`~workers.agent.tools.ToolFailed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bus.errors import NotFound
from schemas.agent import Agent
from schemas.context import Context
from schemas.gateway import GenerateRequest
from schemas.rag import SearchRequest, SearchResult
from workers.agent import netguard, tools
from workers.agent.remote import Remote
from workers.agent.store import Store

#: Longest passage text handed to the model per search result.
MAX_RAG_TEXT = 4000


def _passage(r: SearchResult) -> dict[str, Any]:
    """One search result as the model sees it (and its citation is made from)."""
    item: dict[str, Any] = {
        "document_id": r.document_id,
        "source_id": r.source_id,
        "title": r.title,
        "collection_id": r.collection_id,
        "chunk_id": r.chunk_id,
        "score": round(r.score or 0.0, 4),
        "text": r.text[:MAX_RAG_TEXT],
        "metadata": r.metadata,
    }
    if r.location is not None:
        item["location"] = r.location.model_dump(mode="json", exclude_none=True)
    return item


@dataclass(frozen=True)
class Call:
    """Where a tool call happens: the run, and the context for calls it makes."""

    tenant: str
    agent: Agent
    run_id: str
    ctx: Context
    """Carries the run's deadline to every service the tool calls."""
    remaining: float


class Executor:
    def __init__(
        self, store: Store, remote: Remote, fetcher: netguard.SafeFetcher, default_model: str
    ) -> None:
        self.store = store
        self.remote = remote
        self.fetcher = fetcher
        self.default_model = default_model

    async def run(
        self, spec: tools.ToolSpec, args: dict[str, Any], call: Call
    ) -> tuple[Any, dict[str, int] | None]:
        """Carry out one allowed call; raise ToolRefused or ToolFailed."""
        kind = spec.kind
        ctx = call.ctx
        if kind == "calculator":
            return tools.calculate(args), None
        if kind == "current_time":
            return tools.current_time(args), None
        if kind == "rag_search":
            return await self._rag_search(call, args), None
        if kind == "http_get":
            settings = await self.store.get_settings(call.tenant)
            try:
                page = await self.fetcher.fetch(
                    args["url"], settings.http_allowlist, timeout=call.remaining
                )
            except (netguard.Refused, netguard.FetchError) as exc:
                raise tools.fetch_refusal(exc) from None
            return {
                "url": page.url,
                "status": page.status,
                "content_type": page.content_type,
                "text": page.text,
                "truncated": page.truncated,
            }, None
        if kind == "memory_search":
            vector = (await self.remote.embed([args["query"]], ctx))[0]
            rows = await self.store.search_memories(
                call.tenant, call.agent.agent_id, vector, int(args.get("top_k") or 5)
            )
            return {
                "items": [
                    {"memory_id": r.memory_id, "text": r.text, "score": round(r.score or 0.0, 4)}
                    for r in rows
                ]
            }, None
        if kind == "memory_write":
            vector = (await self.remote.embed([args["text"]], ctx))[0]
            row = await self.store.insert_memory(
                call.tenant, call.agent.agent_id, args["text"], vector, {}, "run", call.run_id
            )
            return {"memory_id": row.memory_id, "stored": True}, None
        if kind == "prompt_render":
            out = await self.remote.render_prompt(args, ctx)
            return out.model_dump(exclude_none=True), None
        if kind == "llm":
            return await self._llm_tool(call, spec, args)
        raise tools.ToolFailed(f"unknown tool kind {kind}")

    async def _rag_search(self, call: Call, args: dict[str, Any]) -> Any:
        granted = list(call.agent.rag_collections)
        if not granted:
            raise tools.ToolRefused("this agent has no document collections")
        wanted = list(args.get("collection_ids") or granted)
        foreign = [c for c in wanted if c not in granted]
        if foreign:
            raise tools.ToolRefused(f"collections {foreign} are not granted to this agent")
        try:
            request = SearchRequest(
                collection_ids=wanted,
                query=args["query"],
                top_k=args.get("top_k") or 5,
                **({"mode": args["mode"]} if args.get("mode") else {}),
            )
        except ValidationError as exc:  # the model's arguments, not our bug
            raise tools.ToolFailed(
                f"invalid rag_search arguments: {exc.error_count()} error(s)"
            ) from None
        try:
            out = await self.remote.rag_search(request, call.ctx)
        except NotFound as exc:
            raise tools.ToolFailed(f"collection not found: {exc.message}") from None
        return {"results": [_passage(r) for r in out.results]}

    async def _llm_tool(
        self, call: Call, spec: tools.ToolSpec, args: dict[str, Any]
    ) -> tuple[Any, dict[str, int] | None]:
        impl = spec.llm
        ctx = call.ctx
        assert impl is not None
        rendered = await self.remote.render_prompt(
            {**impl.prompt.model_dump(exclude_none=True), "variables": args}, ctx
        )
        messages = (
            [m.model_dump(exclude_none=True) for m in rendered.messages]
            if rendered.messages
            else [{"role": "user", "content": rendered.text or ""}]
        )
        out = await self.remote.generate(
            GenerateRequest.model_validate(
                {
                    "model": impl.model or call.agent.llm_model or self.default_model,
                    "messages": messages,
                    "temperature": impl.temperature,
                    "max_tokens": impl.max_tokens,
                }
            ),
            ctx,
        )
        return {"text": out.message.content or ""}, out.usage.model_dump()
