"""Postgres storage of the Agent Service (schema ``agent``).

Every statement filters on ``tenant_id``: a row of another tenant is indistinguishable
from a row that does not exist. Rows come back as the frozen dataclasses of ``rows.py``
(jsonb decoded by the pool's codecs); ``views`` turns them into the contract models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from bus.context import new_id
from bus.errors import Conflict, NotFound
from bus.postgres import Database, migrate, migrations_of
from bus.sql import cursor_time, decode_cursor, encode_cursor, row_of, vector_literal
from workers.agent.rows import (
    AgentRow,
    Fields,
    MemoryRow,
    MessageRow,
    RunRow,
    SettingsRow,
    StepRow,
    ThreadRow,
    ToolRow,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SCHEMA = "agent"
T = TypeVar("T", bound="DataclassInstance")


async def prepare(db: Database) -> None:
    """Create the ``vector`` extension (services race for it at start), then migrate."""
    for attempt in range(10):
        try:
            async with db.connection() as conn:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            break
        except (asyncpg.UniqueViolationError, asyncpg.DuplicateObjectError):
            # Another service created it in the same instant; look again.
            await asyncio.sleep(0.1 * (attempt + 1))
    await migrate(db, SCHEMA, migrations_of("workers.agent"))


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    """The (created_at, id) a page cursor points after, or None for the first page."""
    if not cursor:
        return None
    created, key = decode_cursor(cursor, 2)
    return cursor_time(created), str(key)


def _page(
    cls: type[T], rows: Sequence[asyncpg.Record], limit: int, key: str
) -> tuple[list[T], str | None]:
    page = rows[:limit]
    more = len(rows) > limit
    cursor = encode_cursor(page[-1]["created_at"], page[-1][key]) if more else None
    return [row_of(cls, r) for r in page], cursor


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- agents ----------------------------------------------------------------------

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
        after = _after(cursor)
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
                _like(search) if search else None,
                after[0] if after else None,
                after[1] if after else None,
                limit + 1,
            )
        return _page(AgentRow, rows, limit, "agent_id")

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

    # --- tools and settings ----------------------------------------------------------

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

    # --- threads and messages --------------------------------------------------------

    async def create_thread(self, tenant: str, agent_id: str, user: str, title: str) -> ThreadRow:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO agent.threads (thread_id, tenant_id, agent_id, user_id, title)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING *",
                new_id("thr"),
                tenant,
                agent_id,
                user,
                title,
            )
        return row_of(ThreadRow, row)

    async def get_thread(self, tenant: str, thread_id: str) -> ThreadRow:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM agent.threads WHERE tenant_id = $1 AND thread_id = $2",
                tenant,
                thread_id,
            )
        if row is None:
            raise NotFound(f"thread {thread_id} not found")
        return row_of(ThreadRow, row)

    async def list_threads(
        self, tenant: str, agent_id: str, user: str | None, cursor: str | None, limit: int
    ) -> tuple[list[ThreadRow], str | None]:
        after = _after(cursor)
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """
                SELECT * FROM agent.threads
                WHERE tenant_id = $1 AND agent_id = $2 AND ($3::text IS NULL OR user_id = $3)
                  AND ($4::timestamptz IS NULL OR (created_at, thread_id) < ($4, $5))
                ORDER BY created_at DESC, thread_id DESC LIMIT $6
                """,
                tenant,
                agent_id,
                user,
                after[0] if after else None,
                after[1] if after else None,
                limit + 1,
            )
        return _page(ThreadRow, rows, limit, "thread_id")

    async def delete_thread(self, tenant: str, thread_id: str) -> bool:
        async with self.db.connection() as conn:
            done = await conn.execute(
                "DELETE FROM agent.threads WHERE tenant_id = $1 AND thread_id = $2",
                tenant,
                thread_id,
            )
        return done != "DELETE 0"

    async def add_message(
        self, tenant: str, thread_id: str, role: str, content: str, run_id: str | None
    ) -> MessageRow:
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "INSERT INTO agent.messages (message_id, tenant_id, thread_id, role, content,"
                " run_id) VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                new_id("msg"),
                tenant,
                thread_id,
                role,
                content,
                run_id,
            )
            await conn.execute(
                "UPDATE agent.threads SET updated_at = now()"
                " WHERE tenant_id = $1 AND thread_id = $2",
                tenant,
                thread_id,
            )
        return row_of(MessageRow, row)

    async def messages(
        self, tenant: str, thread_id: str, last: int | None = None
    ) -> list[MessageRow]:
        """A thread's messages in order; with ``last``, only the newest ``last``."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM (SELECT * FROM agent.messages WHERE tenant_id = $1"
                " AND thread_id = $2 ORDER BY seq DESC LIMIT $3) m ORDER BY seq",
                tenant,
                thread_id,
                last,
            )
        return [row_of(MessageRow, r) for r in rows]

    # --- runs and steps --------------------------------------------------------------

    async def insert_run(self, tenant: str, fields: Fields) -> RunRow:
        cols = ["tenant_id", *fields]
        values = [tenant, *fields.values()]
        sql = (
            f"INSERT INTO agent.runs ({', '.join(cols)}) VALUES "
            f"({', '.join(f'${i + 1}' for i in range(len(cols)))}) RETURNING *"
        )
        async with self.db.connection() as conn:
            return row_of(RunRow, await conn.fetchrow(sql, *values))

    async def get_run(self, tenant: str, run_id: str) -> RunRow:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM agent.runs WHERE tenant_id = $1 AND run_id = $2", tenant, run_id
            )
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return row_of(RunRow, row)

    async def list_runs(
        self,
        tenant: str,
        agent_id: str,
        *,
        user: str | None,
        status: str | None,
        thread_id: str | None,
        cursor: str | None,
        limit: int,
    ) -> tuple[list[RunRow], str | None]:
        after = _after(cursor)
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """
                SELECT * FROM agent.runs
                WHERE tenant_id = $1 AND agent_id = $2
                  AND ($3::text IS NULL OR user_id = $3)
                  AND ($4::text IS NULL OR status = $4)
                  AND ($5::text IS NULL OR thread_id = $5)
                  AND ($6::timestamptz IS NULL OR (created_at, run_id) < ($6, $7))
                ORDER BY created_at DESC, run_id DESC LIMIT $8
                """,
                tenant,
                agent_id,
                user,
                status,
                thread_id,
                after[0] if after else None,
                after[1] if after else None,
                limit + 1,
            )
        return _page(RunRow, rows, limit, "run_id")

    async def transition(
        self, tenant: str, run_id: str, from_statuses: Sequence[str], to: str, **fields: Any
    ) -> RunRow | None:
        """Move a run to ``to`` if it is in one of ``from_statuses``; ``None`` if it is not.

        The one place runs change status: the conditional update is what makes a
        claim (queued → running, requires_approval → running) win exactly once.
        """
        sets = ["status = $4", "updated_at = now()"]
        values: list[Any] = [tenant, run_id, list(from_statuses), to]
        for name, value in fields.items():
            values.append(value)
            sets.append(f"{name} = ${len(values)}")
        if to in ("succeeded", "failed", "timed_out", "cancelled"):
            sets.append("finished_at = now()")
        sql = (
            f"UPDATE agent.runs SET {', '.join(sets)} "
            "WHERE tenant_id = $1 AND run_id = $2 AND status = ANY($3) RETURNING *"
        )
        async with self.db.connection() as conn:
            row = await conn.fetchrow(sql, *values)
        return row_of(RunRow, row) if row else None

    async def take_over(self, tenant: str, run_id: str, lease: datetime) -> RunRow | None:
        """Renew the lease of a ``running`` run whose lease ran out; ``None`` if it had not."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE agent.runs SET lease_until = $3, updated_at = now()"
                " WHERE tenant_id = $1 AND run_id = $2 AND status = 'running'"
                " AND lease_until < now() RETURNING *",
                tenant,
                run_id,
                lease,
            )
        return row_of(RunRow, row) if row else None

    async def request_cancel(self, tenant: str, run_id: str) -> RunRow:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                """
                UPDATE agent.runs SET cancel_requested = true, updated_at = now(),
                  status = CASE WHEN status IN ('queued', 'requires_approval')
                                THEN 'cancelled' ELSE status END,
                  finished_at = CASE WHEN status IN ('queued', 'requires_approval')
                                THEN now() ELSE finished_at END,
                  error = CASE WHEN status IN ('queued', 'requires_approval')
                          THEN '{"code": "cancelled", "message": "cancelled by a user"}'::jsonb
                          ELSE error END
                WHERE tenant_id = $1 AND run_id = $2 RETURNING *
                """,
                tenant,
                run_id,
            )
        if row is None:
            raise NotFound(f"run {run_id} not found")
        return row_of(RunRow, row)

    async def cancel_requested(self, tenant: str, run_id: str) -> bool:
        async with self.db.connection() as conn:
            value = await conn.fetchval(
                "SELECT cancel_requested FROM agent.runs WHERE tenant_id = $1 AND run_id = $2",
                tenant,
                run_id,
            )
        return bool(value)

    async def steps(self, tenant: str, run_id: str, after: int = -1) -> list[StepRow]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM agent.steps WHERE tenant_id = $1 AND run_id = $2 AND idx > $3"
                " ORDER BY idx",
                tenant,
                run_id,
                after,
            )
        return [row_of(StepRow, r) for r in rows]

    async def insert_step(self, tenant: str, run_id: str, step: Fields) -> StepRow:
        cols = ["tenant_id", "run_id", *step]
        values = [tenant, run_id, *step.values()]
        sql = (
            f"INSERT INTO agent.steps ({', '.join(cols)}) VALUES "
            f"({', '.join(f'${i + 1}' for i in range(len(cols)))}) RETURNING *"
        )
        async with self.db.connection() as conn:
            return row_of(StepRow, await conn.fetchrow(sql, *values))

    async def update_step(
        self, tenant: str, run_id: str, idx: int, *, only_status: str | None = None, **fields: Any
    ) -> StepRow | None:
        sets = [f"{name} = ${i + 4}" for i, name in enumerate(fields)]
        guard = f" AND status = ${len(fields) + 4}" if only_status else ""
        values = [tenant, run_id, idx, *fields.values()] + ([only_status] if only_status else [])
        sql = (
            f"UPDATE agent.steps SET {', '.join(sets)} "
            f"WHERE tenant_id = $1 AND run_id = $2 AND idx = $3{guard} RETURNING *"
        )
        async with self.db.connection() as conn:
            row = await conn.fetchrow(sql, *values)
        return row_of(StepRow, row) if row else None

    # --- memories --------------------------------------------------------------------

    async def insert_memory(
        self,
        tenant: str,
        agent_id: str,
        text: str,
        embedding: Sequence[float],
        metadata: Fields,
        source: str,
        run_id: str | None,
    ) -> MemoryRow:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO agent.memories (memory_id, tenant_id, agent_id, text, embedding,"
                " metadata, source, run_id) VALUES ($1, $2, $3, $4, $5::vector, $6, $7, $8)"
                " RETURNING memory_id, agent_id, text, metadata, source, run_id, created_at",
                new_id("mem"),
                tenant,
                agent_id,
                text,
                vector_literal(embedding),
                metadata,
                source,
                run_id,
            )
        return row_of(MemoryRow, row)

    async def list_memories(
        self, tenant: str, agent_id: str, cursor: str | None, limit: int
    ) -> tuple[list[MemoryRow], str | None]:
        after = _after(cursor)
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """
                SELECT memory_id, agent_id, text, metadata, source, run_id, created_at
                FROM agent.memories
                WHERE tenant_id = $1 AND agent_id = $2
                  AND ($3::timestamptz IS NULL OR (created_at, memory_id) < ($3, $4))
                ORDER BY created_at DESC, memory_id DESC LIMIT $5
                """,
                tenant,
                agent_id,
                after[0] if after else None,
                after[1] if after else None,
                limit + 1,
            )
        return _page(MemoryRow, rows, limit, "memory_id")

    async def search_memories(
        self, tenant: str, agent_id: str, embedding: Sequence[float], top_k: int
    ) -> list[MemoryRow]:
        # An exact scan of one agent's items (see the migration for why no HNSW index).
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                """
                SELECT memory_id, agent_id, text, metadata, source, run_id, created_at,
                       1 - (embedding <=> $3::vector) AS score
                FROM agent.memories WHERE tenant_id = $1 AND agent_id = $2
                ORDER BY embedding <=> $3::vector, memory_id LIMIT $4
                """,
                tenant,
                agent_id,
                vector_literal(embedding),
                top_k,
            )
        return [row_of(MemoryRow, r) for r in rows]

    async def delete_memory(self, tenant: str, agent_id: str, memory_id: str) -> bool:
        async with self.db.connection() as conn:
            done = await conn.execute(
                "DELETE FROM agent.memories WHERE tenant_id = $1 AND agent_id = $2"
                " AND memory_id = $3",
                tenant,
                agent_id,
                memory_id,
            )
        return done != "DELETE 0"
