"""Agent handlers: create, read, list, update, delete (``agent.create`` ...)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import structlog
from nats.js import JetStreamContext

from bus.codec import Codec
from bus.errors import Forbidden, InvalidRequest, MeshError
from bus.jetstream import publish
from bus.sql import tenant_of
from schemas.agent import (
    Agent,
    AgentCreateRequest,
    AgentDeleteRequest,
    AgentDeleteResponse,
    AgentGetRequest,
    AgentList,
    AgentListRequest,
    AgentUpdateRequest,
    RetrievalSettings,
    retrieval_problem,
)
from schemas.context import Context
from workers.agent import policy, tools, views
from workers.agent.remote import Remote
from workers.agent.runs.cache import cache_tag
from workers.agent.settings import AgentConfig
from workers.agent.store import Store

_log = structlog.get_logger(__name__)

#: Agent fields an update may set to null.
NULLABLE = frozenset({"description", "llm_provider"})


class Agents:
    def __init__(
        self, store: Store, remote: Remote, config: AgentConfig, js: JetStreamContext, codec: Codec
    ) -> None:
        self.store = store
        self.remote = remote
        self.config = config
        self.js = js
        self.codec = codec

    async def _check_attach(
        self, tenant: str, names: list[str], ctx: Context, already: Sequence[str] = ()
    ) -> None:
        """Every newly attached tool exists, and the caller holds its roles."""
        new = [n for n in dict.fromkeys(names) if n not in already]
        declared = {
            r.name: tools.declared_spec(r)
            for r in await self.store.list_tools(
                tenant, [n for n in new if n not in tools.BUILTINS]
            )
        }
        for name in new:
            spec = declared.get(name) or (
                tools.builtin_spec(name) if name in tools.BUILTINS else None
            )
            if spec is None:
                raise InvalidRequest(f"no tool named {name!r}")
            if not policy.holds(ctx.roles, spec.required_roles):
                raise Forbidden(f"attaching {name} needs role(s) {', '.join(spec.required_roles)}")

    async def create(self, req: AgentCreateRequest, ctx: Context) -> Agent:
        tenant = tenant_of(ctx)
        await self._check_attach(tenant, req.tools, ctx)
        _check_approval_list(req.approval_required, req.tools)
        row = await self.store.insert_agent(
            tenant,
            {
                "name": req.name,
                "description": req.description,
                "llm_model": req.llm_model or self.config.default_model,
                "llm_provider": req.llm_provider,
                "system_prompt": req.system_prompt,
                "status": req.status,
                "capabilities": req.capabilities,
                "tools": list(dict.fromkeys(req.tools)),
                "rag_collections": list(dict.fromkeys(req.rag_collections)),
                "approval_required": list(dict.fromkeys(req.approval_required)),
                "parameters": req.parameters.model_dump(),
                "limits": req.limits.model_dump(),
                "memory": req.memory.model_dump(),
                "retrieval": req.retrieval.model_dump(),
                "created_by": policy.user_of(ctx),
            },
        )
        await self._event("agent.created", row.agent_id, ctx)
        return views.agent(row)

    async def _event(self, name: str, agent_id: str, ctx: Context) -> None:
        try:
            await publish(
                self.js,
                f"events.domain.{name}",
                {"agent_id": agent_id},
                ctx,
                msg_id=f"{name}:{agent_id}",
                codec=self.codec,
            )
        except MeshError as exc:  # the agent exists either way; the event is a notice
            _log.warning("domain_event_failed", event=name, error=exc.code)

    async def get(self, req: AgentGetRequest, ctx: Context) -> Agent:
        return views.agent(await self.store.get_agent(tenant_of(ctx), req.agent_id))

    async def list_agents(self, req: AgentListRequest, ctx: Context) -> AgentList:
        rows, cursor = await self.store.list_agents(
            tenant_of(ctx),
            status=req.status,
            search=req.search,
            include_archived=req.include_archived,
            cursor=req.cursor,
            limit=req.limit,
        )
        return AgentList(items=[views.agent(r) for r in rows], next_cursor=cursor)

    async def update(self, req: AgentUpdateRequest, ctx: Context) -> Agent:
        tenant = tenant_of(ctx)
        fields = req.model_dump(exclude_unset=True, exclude={"agent_id", "version"})
        if not fields:
            raise InvalidRequest("nothing to change")
        nulls = sorted(k for k, v in fields.items() if v is None and k not in NULLABLE)
        if nulls:
            raise InvalidRequest(f"{', '.join(nulls)} cannot be null")
        current = await self.store.get_agent(tenant, req.agent_id)
        policy.require_agent_owner(ctx, current.created_by)
        if "tools" in fields:
            await self._check_attach(tenant, fields["tools"], ctx, current.tools)
            fields["tools"] = list(dict.fromkeys(fields["tools"]))
        _check_approval_list(
            fields.get("approval_required", current.approval_required),
            fields.get("tools", current.tools),
        )
        _check_retrieval(
            fields.get("retrieval", current.retrieval),
            fields.get("rag_collections", current.rag_collections),
        )
        row = await self.store.update_agent(tenant, req.agent_id, req.version, fields)
        return views.agent(row)

    async def delete(self, req: AgentDeleteRequest, ctx: Context) -> AgentDeleteResponse:
        tenant = tenant_of(ctx)
        row = await self.store.get_agent(tenant, req.agent_id)
        policy.require_agent_owner(ctx, row.created_by)
        status: Literal["deleted", "archived"]
        if req.hard:
            await self.store.delete_agent(tenant, req.agent_id)
            status = "deleted"
        else:
            if row.status != "archived":
                await self.store.update_agent(
                    tenant, req.agent_id, row.version, {"status": "archived"}
                )
            status = "archived"
        await self.remote.cache_invalidate(cache_tag(req.agent_id), ctx)
        return AgentDeleteResponse(agent_id=req.agent_id, status=status)


def _check_approval_list(
    approval_required: Sequence[str] | None, attached: Sequence[str] | None
) -> None:
    stray = sorted(set(approval_required or ()) - set(attached or ()))
    if stray:
        raise InvalidRequest(f"approval_required names tools not attached: {stray}")


def _check_retrieval(retrieval: Mapping[str, Any], collections: Sequence[str]) -> None:
    """The agent as it would be after an update: auto retrieval needs a collection."""
    problem = retrieval_problem(RetrievalSettings.model_validate(retrieval), list(collections))
    if problem:
        raise InvalidRequest(problem)
