"""Agents, declared tools and the tenant's settings (``agent.agents``, ``agent.tools``,
``agent.settings``)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from bus.context import new_id
from bus.errors import Conflict, NotFound
from bus.sql import row_of
from workers.agent.rows import (
    AgentRow,
    Fields,
    SettingsRow,
    ToolRow,
)
from workers.agent.store.base import Base, like, page, page_after


class Agents(Base):
    async def insert_agent(self, tenant: str, fields: Fields) -> AgentRow:
        agent_id = new_id("agt")
        cols = ["agent_id", "tenant_id", *fields]
        values = [agent_id, tenant, *fields.values()]
        sql = (
            f"INSERT INTO agent.agents ({', '.join(cols)}) VALUES "
            f"({', '.join(f'${i + 1}' for i in range(len(cols)))}) RETURNING *"
        )
        try:
            async with self.db.connection() as conn:
                return row_of(AgentRow, await conn.fetchrow(sql, *values))
        except asyncpg.UniqueViolationError:
            raise Conflict(f"an agent named {fields.get('name')!r} exists") from None

    async def get_agent(self, tenant: str, agent_id: str) -> AgentRow:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM agent.agents WHERE tenant_id = $1 AND agent_id = $2",
                tenant,
                agent_id,
            )
        if row is None:
            raise NotFound(f"agent {agent_id} not found")
        return row_of(AgentRow, row)

    async def list_agents(
        self,
        tenant: str,
        *,
        status: str | None,
        search: str | None,
        include_archived: bool,
        cursor: str | None,
        limit: int,
    ) -> tuple[list[AgentRow], str | None]:
        after = page_after(cursor)
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """
                SELECT * FROM agent.agents
                WHERE tenant_id = $1
                  AND ($2::text IS NULL OR status = $2)
                  AND ($3::boolean OR status <> 'archived' OR $2::text = 'archived')
                  AND ($4::text IS NULL OR name ILIKE $4)
                  AND ($5::timestamptz IS NULL OR (created_at, agent_id) < ($5, $6))
                ORDER BY created_at DESC, agent_id DESC
                LIMIT $7
                """,
                tenant,
                status,
                include_archived,
                like(search) if search else None,
                after[0] if after else None,
                after[1] if after else None,
                limit + 1,
            )
        return page(AgentRow, rows, limit, "agent_id")

    async def update_agent(
        self, tenant: str, agent_id: str, version: int, fields: Fields
    ) -> AgentRow:
        """Apply ``fields`` if the stored version is ``version``; bump it. Else conflict."""
        sets = [f"{name} = ${i + 4}" for i, name in enumerate(fields)]
        sets += ["version = version + 1", "updated_at = now()"]
        sql = (
            f"UPDATE agent.agents SET {', '.join(sets)} "
            "WHERE tenant_id = $1 AND agent_id = $2 AND version = $3 RETURNING *"
        )
        try:
            async with self.db.connection() as conn:
                row = await conn.fetchrow(sql, tenant, agent_id, version, *fields.values())
        except asyncpg.UniqueViolationError:
            raise Conflict(f"an agent named {fields.get('name')!r} exists") from None
        if row is None:
            current = await self.get_agent(tenant, agent_id)  # NotFound if it is not ours
            raise Conflict(
                f"agent {agent_id} is at version {current.version}, not {version}",
                {"version": current.version},
            )
        return row_of(AgentRow, row)

    async def delete_agent(self, tenant: str, agent_id: str) -> bool:
        async with self.db.connection() as conn:
            done = await conn.execute(
                "DELETE FROM agent.agents WHERE tenant_id = $1 AND agent_id = $2",
                tenant,
                agent_id,
            )
        return done != "DELETE 0"

    async def agents_using_tool(self, tenant: str, name: str) -> list[str]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT agent_id FROM agent.agents WHERE tenant_id = $1 AND $2 = ANY(tools)"
                " AND status <> 'archived'",
                tenant,
                name,
            )
        return [r["agent_id"] for r in rows]

    async def list_tools(self, tenant: str, names: Sequence[str] | None = None) -> list[ToolRow]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM agent.tools WHERE tenant_id = $1"
                " AND ($2::text[] IS NULL OR name = ANY($2)) ORDER BY name",
                tenant,
                list(names) if names is not None else None,
            )
        return [row_of(ToolRow, r) for r in rows]

    async def get_tool(self, tenant: str, name: str) -> ToolRow:
        rows = await self.list_tools(tenant, [name])
        if not rows:
            raise NotFound(f"tool {name} not found")
        return rows[0]

    async def insert_tool(self, tenant: str, fields: Fields) -> ToolRow:
        cols = ["tool_id", "tenant_id", *fields]
        values = [new_id("tool"), tenant, *fields.values()]
        sql = (
            f"INSERT INTO agent.tools ({', '.join(cols)}) VALUES "
            f"({', '.join(f'${i + 1}' for i in range(len(cols)))}) RETURNING *"
        )
        try:
            async with self.db.connection() as conn:
                return row_of(ToolRow, await conn.fetchrow(sql, *values))
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a tool named {fields['name']!r} exists") from None

    async def update_tool(self, tenant: str, name: str, version: int, fields: Fields) -> ToolRow:
        sets = [f"{col} = ${i + 4}" for i, col in enumerate(fields)]
        sets += ["version = version + 1", "updated_at = now()"]
        sql = (
            f"UPDATE agent.tools SET {', '.join(sets)} "
            "WHERE tenant_id = $1 AND name = $2 AND version = $3 RETURNING *"
        )
        async with self.db.connection() as conn:
            row = await conn.fetchrow(sql, tenant, name, version, *fields.values())
        if row is None:
            current = await self.get_tool(tenant, name)
            raise Conflict(
                f"tool {name} is at version {current.version}, not {version}",
                {"version": current.version},
            )
        return row_of(ToolRow, row)

    async def delete_tool(self, tenant: str, name: str) -> bool:
        async with self.db.connection() as conn:
            done = await conn.execute(
                "DELETE FROM agent.tools WHERE tenant_id = $1 AND name = $2", tenant, name
            )
        return done != "DELETE 0"

    async def get_settings(self, tenant: str) -> SettingsRow:
        async with self.db.connection() as conn:
            row = await conn.fetchrow("SELECT * FROM agent.settings WHERE tenant_id = $1", tenant)
        return row_of(SettingsRow, row) if row else SettingsRow([], 0, None)

    async def put_settings(
        self, tenant: str, allowlist: list[str], version: int | None
    ) -> SettingsRow:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                """
                INSERT INTO agent.settings AS s (tenant_id, http_allowlist) VALUES ($1, $2)
                ON CONFLICT (tenant_id) DO UPDATE
                  SET http_allowlist = $2, version = s.version + 1, updated_at = now()
                  WHERE $3::integer IS NULL OR s.version = $3
                RETURNING *
                """,
                tenant,
                allowlist,
                version,
            )
        if row is None or (version is not None and row["version"] != version + 1):
            raise Conflict("settings changed since they were read")
        return row_of(SettingsRow, row)
