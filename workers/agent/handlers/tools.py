"""Tool handlers (declared tools of a tenant, the built-ins) and the tenant's settings."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from bus.errors import Conflict, InvalidRequest
from bus.sql import tenant_of
from schemas.agent import (
    AgentSettings,
    Deleted,
    Implementation,
    SettingsGetRequest,
    SettingsUpdateRequest,
    Tool,
    ToolCreateRequest,
    ToolDeleteRequest,
    ToolGetRequest,
    ToolList,
    ToolListRequest,
    ToolUpdateRequest,
)
from schemas.context import Context
from workers.agent import netguard, policy, tools, views
from workers.agent.store import Store


class Tools:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def list_tools(self, req: ToolListRequest, ctx: Context) -> ToolList:
        builtins = [_builtin_view(kind) for kind in tools.BUILTINS]
        declared = [views.tool(r) for r in await self.store.list_tools(tenant_of(ctx))]
        return ToolList(items=builtins + declared)

    async def get_tool(self, req: ToolGetRequest, ctx: Context) -> Tool:
        if req.name in tools.BUILTINS:
            return _builtin_view(req.name)
        return views.tool(await self.store.get_tool(tenant_of(ctx), req.name))

    async def create_tool(self, req: ToolCreateRequest, ctx: Context) -> Tool:
        policy.require_tools_write(ctx)
        if req.name in tools.BUILTINS:
            raise InvalidRequest(f"{req.name} is a built-in tool")
        await tools.check_declaration_off_loop(req.parameters, req.implementation, tenant_of(ctx))
        row = await self.store.insert_tool(
            tenant_of(ctx),
            {
                "name": req.name,
                "description": req.description,
                "parameters": req.parameters,
                "implementation": req.implementation.model_dump(),
                "required_roles": list(dict.fromkeys(req.required_roles)),
                "requires_approval": req.requires_approval,
                "created_by": policy.user_of(ctx),
            },
        )
        return views.tool(row)

    async def update_tool(self, req: ToolUpdateRequest, ctx: Context) -> Tool:
        policy.require_tools_write(ctx)
        tenant = tenant_of(ctx)
        if req.name in tools.BUILTINS:
            raise InvalidRequest(f"{req.name} is a built-in tool")
        current = await self.store.get_tool(tenant, req.name)
        fields = req.model_dump(exclude_unset=True, exclude={"name", "version"})
        if any(v is None for v in fields.values()):
            raise InvalidRequest("fields cannot be set to null")
        if "implementation" in fields and req.implementation is not None:
            fields["implementation"] = req.implementation.model_dump()
        parameters = fields.get("parameters", current.parameters)
        if parameters.get("type") != "object":
            raise InvalidRequest('parameters must be a JSON Schema with "type": "object"')
        await tools.check_declaration_off_loop(
            parameters,
            _implementation(fields.get("implementation", current.implementation)),
            tenant,
        )
        row = await self.store.update_tool(tenant, req.name, req.version, fields)
        return views.tool(row)

    async def delete_tool(self, req: ToolDeleteRequest, ctx: Context) -> Deleted:
        policy.require_tools_write(ctx)
        tenant = tenant_of(ctx)
        if req.name in tools.BUILTINS:
            raise InvalidRequest(f"{req.name} is a built-in tool")
        using = await self.store.agents_using_tool(tenant, req.name)
        if using:
            raise Conflict(f"tool {req.name} is attached to agents", {"agents": using})
        return Deleted(deleted=await self.store.delete_tool(tenant, req.name))

    async def get_settings(self, req: SettingsGetRequest, ctx: Context) -> AgentSettings:
        return views.settings(await self.store.get_settings(tenant_of(ctx)))

    async def update_settings(self, req: SettingsUpdateRequest, ctx: Context) -> AgentSettings:
        policy.require_tools_write(ctx)
        for entry in req.http_allowlist:
            if reason := netguard.check_allowlist_entry(entry):
                raise InvalidRequest(f"{entry} can never be fetched: {reason}")
        row = await self.store.put_settings(
            tenant_of(ctx), list(dict.fromkeys(e.lower() for e in req.http_allowlist)), req.version
        )
        return views.settings(row)


def _implementation(value: dict[str, Any]) -> Any:
    return TypeAdapter(Implementation).validate_python(value)


def _builtin_view(kind: str) -> Tool:
    b = tools.BUILTINS[kind]
    return Tool(
        name=b.kind,
        description=b.description,
        parameters=b.parameters,
        builtin=True,
        required_roles=list(b.required_roles),
    )
