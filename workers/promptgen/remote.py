"""The Prompt Generator's calls to other services, all over the bus, as the caller.

Every call carries the caller's context (tenant, user, roles), so each service applies
its own tenant scoping and permission checks: publishing is ``agent.create`` *as the
publisher*. Service names come from :class:`PromptgenConfig` so a stand-in can answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import structlog

from bus.client import Client
from bus.context import child
from bus.errors import MeshError, NotFound
from schemas import agent, gateway, prompt, rag
from schemas.agent import Agent, AgentSettings, RunResult, Tool, ToolList
from schemas.context import Context
from schemas.gateway import GenerateRequest, GenerateResponse, ModelsResponse
from schemas.prompt import PromptListResponse
from schemas.rag import ListCollectionsResponse
from workers.promptgen.catalogue import Catalogue, Template, ToolInfo
from workers.promptgen.settings import PromptgenConfig

_log = structlog.get_logger(__name__)

#: Reading the catalogue must not eat a generation's time.
LOOKUP_TIMEOUT_S = 5.0


def _tool_info(t: Tool) -> ToolInfo:
    impl = t.implementation
    if t.builtin:
        base = t.name
    elif impl is not None and impl.kind == "llm":
        base = "llm"
    elif impl is not None:
        base = impl.builtin  # type: ignore[union-attr]
    else:
        base = t.name
    return ToolInfo(
        name=t.name,
        builtin=t.builtin,
        base=base,
        description=t.description,
        parameters=t.parameters,
        requires_approval=t.requires_approval,
        required_roles=tuple(t.required_roles),
    )


class Remote:
    def __init__(self, client: Client, config: PromptgenConfig) -> None:
        self.client = client
        self.config = config
        a = config.agent_service
        self._generate = gateway.GENERATE.served_as(config.gateway_service)
        self._models = gateway.MODELS.served_as(config.gateway_service)
        self._list_tools = agent.LIST_TOOLS.served_as(a)
        self._settings = agent.GET_SETTINGS.served_as(a)
        self._create = agent.CREATE.served_as(a)
        self._get = agent.GET.served_as(a)
        self._update = agent.UPDATE.served_as(a)
        self._create_tool = agent.CREATE_TOOL.served_as(a)
        self._get_tool = agent.GET_TOOL.served_as(a)
        self._update_tool = agent.UPDATE_TOOL.served_as(a)
        self._get_run = agent.GET_RUN.served_as(a)
        self._collections = rag.LIST_COLLECTIONS.served_as(config.rag_service)
        self._collection = rag.GET_COLLECTION.served_as(config.rag_service)
        self._templates = prompt.LIST.served_as(config.prompt_service)
        self._template = prompt.GET.served_as(config.prompt_service)

    # --- generation -------------------------------------------------------------------

    async def generate(self, req: GenerateRequest, ctx: Context) -> GenerateResponse:
        return await self.client.call(self._generate, req, child(ctx))

    # --- the catalogue ----------------------------------------------------------------

    async def catalogue(self, ctx: Context) -> Catalogue:
        lookup = child(ctx, timeout=LOOKUP_TIMEOUT_S)
        limit = self.config.catalogue_limit
        unknown: set[str] = set()

        async def part(name: str, call: Any) -> Any:
            try:
                return await call
            except MeshError as exc:
                _log.warning("promptgen_catalogue_part_failed", part=name, error=exc.code)
                unknown.add(name)
                return None

        async with asyncio.TaskGroup() as tg:
            t_tools = tg.create_task(part("tools", self.client.call(self._list_tools, {}, lookup)))
            t_settings = tg.create_task(
                part("settings", self.client.call(self._settings, {}, lookup))
            )
            t_cols = tg.create_task(
                part(
                    "collections",
                    self.client.call(self._collections, {"limit": min(limit, 500)}, lookup),
                )
            )
            t_tpl = tg.create_task(
                part(
                    "templates",
                    self.client.call(self._templates, {"limit": min(limit, 100)}, lookup),
                )
            )
            t_models = tg.create_task(part("models", self.client.call(self._models, {}, lookup)))
        tools: ToolList | None = t_tools.result()
        settings: AgentSettings | None = t_settings.result()
        cols: ListCollectionsResponse | None = t_cols.result()
        tpls: PromptListResponse | None = t_tpl.result()
        models: ModelsResponse | None = t_models.result()
        return Catalogue(
            tools={t.name: _tool_info(t) for t in (tools.items if tools else [])},
            collections={c.collection_id: c.name for c in (cols.collections if cols else [])},
            templates={
                p.name: Template(p.name, dict(p.labels), p.latest_version)
                for p in (tpls.items if tpls else [])
            },
            models=tuple(m.alias for m in (models.models if models else []) if m.mode == "chat"),
            allowlist=tuple(settings.http_allowlist if settings else ()),
            unknown=frozenset(unknown),
        )

    async def complete(
        self, cat: Catalogue, collections: list[str], templates: list[str], ctx: Context
    ) -> Catalogue:
        """``cat`` plus referenced collections and templates beyond the listed page."""
        lookup = child(ctx, timeout=LOOKUP_TIMEOUT_S)
        found_cols = dict(cat.collections)
        found_tpls = dict(cat.templates)
        for cid in collections:
            if cid in found_cols or "collections" in cat.unknown:
                continue
            try:
                col = await self.client.call(self._collection, {"collection_id": cid}, lookup)
                found_cols[col.collection_id] = col.name
            except (NotFound, MeshError):
                pass
        for name in templates:
            if name in found_tpls or "templates" in cat.unknown:
                continue
            try:
                v = await self.client.call(
                    self._template, {"name": name, "label": "latest"}, lookup
                )
                found_tpls[name] = Template(name, {}, v.version)
            except (NotFound, MeshError):
                pass
        return replace(cat, collections=found_cols, templates=found_tpls)

    # --- the Agent Service, as the caller ---------------------------------------------

    async def create_agent(self, body: dict[str, Any], ctx: Context) -> Agent:
        return await self.client.call(self._create, body, child(ctx))

    async def get_agent(self, agent_id: str, ctx: Context) -> Agent | None:
        try:
            return await self.client.call(self._get, {"agent_id": agent_id}, child(ctx))
        except NotFound:
            return None

    async def update_agent(self, body: dict[str, Any], ctx: Context) -> Agent:
        return await self.client.call(self._update, body, child(ctx))

    async def create_tool(self, body: dict[str, Any], ctx: Context) -> Tool:
        return await self.client.call(self._create_tool, body, child(ctx))

    async def get_tool(self, name: str, ctx: Context) -> Tool | None:
        try:
            return await self.client.call(self._get_tool, {"name": name}, child(ctx))
        except NotFound:
            return None

    async def update_tool(self, body: dict[str, Any], ctx: Context) -> Tool:
        return await self.client.call(self._update_tool, body, child(ctx))

    async def get_run(self, run_id: str, ctx: Context) -> RunResult:
        return await self.client.call(self._get_run, {"run_id": run_id}, child(ctx))
