"""Prompt Service endpoints: ``prompt.<operation>.request``.

Templates (create, get, list, update, labels, delete, diff), rendering in a bounded
sandbox, and context building under a token budget counted by the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog

from bus import offload
from bus.client import Client
from bus.codec import Codec
from bus.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from bus.sql import tenant_of
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import prompt
from schemas.context import Context
from schemas.prompt import (
    DEFAULT_LABEL,
    Message,
    PromptContextRequest,
    PromptContextResponse,
    PromptCreateRequest,
    PromptCreateResponse,
    PromptDeleteRequest,
    PromptDeleteResponse,
    PromptDeleteVersionRequest,
    PromptDeleteVersionResponse,
    PromptDiffRequest,
    PromptDiffResponse,
    PromptGetRequest,
    PromptListRequest,
    PromptListResponse,
    PromptListVersionsRequest,
    PromptListVersionsResponse,
    PromptRenderRequest,
    PromptRenderResponse,
    PromptSetLabelRequest,
    PromptSetLabelResponse,
    PromptSummary,
    PromptUnsetLabelRequest,
    PromptUnsetLabelResponse,
    PromptUpdateRequest,
    PromptUpdateResponse,
    PromptVersion,
    TemplateUsed,
    VersionSummary,
)
from workers.prompt import context as ctxbuild
from workers.prompt.diff import config_changes, unified
from workers.prompt.includes import check_refs, resolve
from workers.prompt.renderer import Rendered, Renderer, Source
from workers.prompt.sandbox import weigh
from workers.prompt.store import Body, PromptStore, VersionRow, open_database

VERSION = "0.1.0"
#: Largest ``variables`` a render accepts (approximate characters once turned into text).
MAX_VARIABLES_SIZE = 1_000_000

_log = structlog.get_logger(__name__)


def _source(tenant: str, row: VersionRow) -> Source:
    return Source(
        key=(tenant, row.template_id, row.version),
        name=row.name,
        type=row.type,
        template=row.template,
        messages=row.messages,
    )


class PromptHandlers:
    def __init__(self, store: PromptStore, renderer: Renderer, client: Client) -> None:
        self.store = store
        self.renderer = renderer
        self.client = client

    # -- helpers ---------------------------------------------------------------------

    async def _body(
        self,
        tenant: str,
        type_: str,
        template: str | None,
        messages: list[dict[str, str]] | None,
        config: dict[str, Any],
        declared: list[str],
        commit_message: str | None,
    ) -> Body:
        analysis = await self.renderer.analyze(type_, template, messages, key=tenant)
        check_refs(analysis.refs)
        return Body(
            template=template,
            messages=messages,
            config=config,
            variables=list(dict.fromkeys([*analysis.variables, *declared])),
            declared=declared,
            refs=analysis.refs,
            commit_message=commit_message,
        )

    async def _find(
        self, tenant: str, name: str, label: str | None, version: int | None
    ) -> VersionRow:
        if version is None and label is None:
            label = DEFAULT_LABEL
        row = await self.store.find(tenant, name, label=label, version=version)
        if row is not None:
            return row
        if await self.store.head(tenant, name) is None:
            raise NotFound(f"no template named {name!r}")
        if version is not None:
            raise NotFound(f"{name!r} has no version {version}")
        raise NotFound(
            f"no version of {name!r} carries label {label!r}",
            {"hint": "pass label='latest' or a version, or set the label"},
        )

    async def _render(self, tenant: str, row: VersionRow, variables: dict[str, Any]) -> Rendered:
        if weigh(variables, MAX_VARIABLES_SIZE) > MAX_VARIABLES_SIZE:
            raise PayloadTooLarge(f"variables exceed {MAX_VARIABLES_SIZE} characters")
        includes = await resolve(self.store, tenant, row) if row.refs else {}
        return await self.renderer.render(
            _source(tenant, row),
            {ref: _source(tenant, r) for ref, r in includes.items()},
            variables,
        )

    # -- templates -------------------------------------------------------------------

    async def create(self, req: PromptCreateRequest, ctx: Context) -> PromptCreateResponse:
        tenant = tenant_of(ctx)
        body = await self._body(
            tenant,
            req.type,
            req.template,
            [m.model_dump() for m in req.messages] if req.messages is not None else None,
            req.config or {},
            req.variables or [],
            req.commit_message,
        )
        labels = [DEFAULT_LABEL] if req.labels is None else req.labels
        template_id = await self.store.create(tenant, req.name, req.type, body, labels, ctx.user)
        return PromptCreateResponse(template_id=template_id, name=req.name, version=1)

    async def update(self, req: PromptUpdateRequest, ctx: Context) -> PromptUpdateResponse:
        tenant = tenant_of(ctx)
        base = await self.store.find(tenant, req.name, version=req.base_version)
        if base is None:
            head = await self.store.head(tenant, req.name)
            if head is None:
                raise NotFound(f"no template named {req.name!r}")
            raise Conflict(
                f"base_version {req.base_version} is not the latest version ({head[1]})",
                {"latest_version": head[1]},
            )
        if base.type == "text" and req.messages is not None:
            raise InvalidRequest(f"{req.name!r} is a text template: give 'template'")
        if base.type == "chat" and req.template is not None:
            raise InvalidRequest(f"{req.name!r} is a chat template: give 'messages'")
        body = await self._body(
            tenant,
            base.type,
            req.template if req.template is not None else base.template,
            [m.model_dump() for m in req.messages] if req.messages is not None else base.messages,
            req.config if req.config is not None else base.config,
            req.variables if req.variables is not None else base.declared,
            req.commit_message,
        )
        template_id, version = await self.store.add_version(
            tenant, req.name, req.base_version, body, req.labels or [], ctx.user
        )
        return PromptUpdateResponse(template_id=template_id, name=req.name, version=version)

    async def get(self, req: PromptGetRequest, ctx: Context) -> PromptVersion:
        tenant = tenant_of(ctx)
        row = await self._find(tenant, req.name, req.label, req.version)
        labels, latest = await self.store.labels_of(tenant, row.template_id, row.version)
        return PromptVersion(
            template_id=row.template_id,
            name=row.name,
            type=row.type,
            version=row.version,
            template=row.template,
            messages=[Message(**m) for m in row.messages] if row.messages is not None else None,
            config=row.config,
            variables=row.variables,
            labels=labels,
            latest_version=latest,
            commit_message=row.commit_message,
            created_by=row.created_by,
            created_at=row.created_at,
        )

    async def list(self, req: PromptListRequest, ctx: Context) -> PromptListResponse:
        # Keyset cursors are the last item seen (as Stripe's `starting_after`): names and
        # versions are already the tenant's own, so there is nothing to hide or forge.
        rows = await self.store.list_templates(
            tenant_of(ctx), req.query, req.label, req.limit + 1, req.cursor
        )
        page = rows[: req.limit]
        return PromptListResponse(
            items=[PromptSummary(**r) for r in page],
            next_cursor=page[-1]["name"] if len(rows) > req.limit else None,
        )

    async def list_versions(
        self, req: PromptListVersionsRequest, ctx: Context
    ) -> PromptListVersionsResponse:
        tenant = tenant_of(ctx)
        head = await self.store.head(tenant, req.name)
        if head is None:
            raise NotFound(f"no template named {req.name!r}")
        rows = await self.store.list_versions(tenant, head[0], req.limit + 1, req.cursor)
        page = rows[: req.limit]
        items = []
        for r in page:
            labels = list(r["labels"])
            if r["version"] == head[1]:
                labels.append("latest")
            items.append(VersionSummary(**{**r, "labels": labels}))
        return PromptListVersionsResponse(
            name=req.name,
            items=items,
            next_cursor=page[-1]["version"] if len(rows) > req.limit else None,
        )

    async def set_label(self, req: PromptSetLabelRequest, ctx: Context) -> PromptSetLabelResponse:
        previous = await self.store.set_label(tenant_of(ctx), req.name, req.label, req.version)
        return PromptSetLabelResponse(
            name=req.name, label=req.label, version=req.version, previous_version=previous
        )

    async def unset_label(
        self, req: PromptUnsetLabelRequest, ctx: Context
    ) -> PromptUnsetLabelResponse:
        version = await self.store.unset_label(tenant_of(ctx), req.name, req.label)
        return PromptUnsetLabelResponse(name=req.name, label=req.label, version=version)

    async def delete(self, req: PromptDeleteRequest, ctx: Context) -> PromptDeleteResponse:
        count = await self.store.delete(tenant_of(ctx), req.name)
        return PromptDeleteResponse(name=req.name, deleted_versions=count)

    async def delete_version(
        self, req: PromptDeleteVersionRequest, ctx: Context
    ) -> PromptDeleteVersionResponse:
        latest = await self.store.delete_version(tenant_of(ctx), req.name, req.version)
        return PromptDeleteVersionResponse(
            name=req.name, version=req.version, latest_version=latest
        )

    async def diff(self, req: PromptDiffRequest, ctx: Context) -> PromptDiffResponse:
        tenant = tenant_of(ctx)
        a = await self._find(tenant, req.name, None, req.from_version)
        b = await self._find(tenant, req.name, None, req.to_version)
        text = unified(a, b)
        changes = config_changes(a.config, b.config)
        added = [v for v in b.variables if v not in a.variables]
        removed = [v for v in a.variables if v not in b.variables]
        return PromptDiffResponse(
            name=req.name,
            from_version=a.version,
            to_version=b.version,
            changed=bool(text or changes or added or removed),
            diff=text,
            config_changes=changes,
            variables_added=added,
            variables_removed=removed,
        )

    # -- rendering and context -------------------------------------------------------

    async def render(self, req: PromptRenderRequest, ctx: Context) -> PromptRenderResponse:
        tenant = tenant_of(ctx)
        row = await self._find(tenant, req.name, req.label, req.version)
        out = await self._render(tenant, row, req.variables)
        return PromptRenderResponse(
            name=row.name,
            version=row.version,
            type=row.type,
            text=out.text,
            messages=[Message(**m) for m in out.messages] if out.messages is not None else None,
            config=row.config,
        )

    async def context(self, req: PromptContextRequest, ctx: Context) -> PromptContextResponse:
        tenant = tenant_of(ctx)
        system: list[dict[str, str]] = []
        used = None
        model = req.model
        if req.system is not None:
            ref = req.system
            row = await self._find(tenant, ref.name, ref.label, ref.version)
            out = await self._render(tenant, row, ref.variables)
            if out.text is not None:
                system = [{"role": "system", "content": out.text}]
            else:
                system = list(out.messages or [])
            used = TemplateUsed(name=row.name, version=row.version)
            configured = row.config.get("model")
            if model is None and isinstance(configured, str):
                model = configured
        elif req.system_text is not None:
            system = [{"role": "system", "content": req.system_text}]
        try:
            built = await ctxbuild.build(
                req, system, ctxbuild.GatewayCounter(self.client, ctx, model)
            )
        except ctxbuild.GatewayUnavailable as exc:
            _log.warning("count_tokens_unavailable", reason=str(exc), fallback="estimate")
            built = await ctxbuild.build(req, system, ctxbuild.EstimateCounter(model))
        return PromptContextResponse(
            model=built.model,
            messages=ctxbuild.as_messages(built.messages),
            total_tokens=built.total_tokens,
            budget_tokens=req.budget_tokens,
            estimated=built.estimated,
            system=used,
            passages_used=built.passages_used,
            history_used=built.history_used,
            omitted=built.omitted,
        )


def build_worker(
    handlers: PromptHandlers, codec: Codec | None = None, max_concurrency: int = 64
) -> Worker:
    h = handlers
    return Worker(
        "prompt",
        endpoints=[
            Endpoint(prompt.CREATE, h.create),
            Endpoint(prompt.UPDATE, h.update),
            Endpoint(prompt.GET, h.get),
            Endpoint(prompt.LIST, h.list),
            Endpoint(prompt.LIST_VERSIONS, h.list_versions),
            Endpoint(prompt.SET_LABEL, h.set_label),
            Endpoint(prompt.UNSET_LABEL, h.unset_label),
            Endpoint(prompt.DELETE, h.delete),
            Endpoint(prompt.DELETE_VERSION, h.delete_version),
            Endpoint(prompt.DIFF, h.diff),
            Endpoint(prompt.RENDER, h.render),
            Endpoint(prompt.CONTEXT, h.context),
        ],
        version=VERSION,
        description="Versioned prompt templates, sandboxed rendering, context building",
        codec=codec or Codec(),
        max_concurrency=max_concurrency,
    )


@asynccontextmanager
async def lifespan(env: WorkerEnv) -> AsyncIterator[Worker]:
    if not env.settings.database_url:
        raise RuntimeError("DATABASE_URL is not set")
    db = await open_database(env.settings.database_url)
    renderer = Renderer()
    try:
        handlers = PromptHandlers(PromptStore(db), renderer, env.client)
        async with offload.using(env.settings):
            yield build_worker(
                handlers, Codec(env.settings.codec_type), env.settings.max_concurrency
            )
    finally:
        await db.close()
