"""Runs and their steps (``agent.runs``, ``agent.steps``); ``transition`` is the one
place a run changes status."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bus.errors import NotFound
from bus.sql import row_of
from workers.agent.rows import (
    Fields,
    RunRow,
    StepRow,
)
from workers.agent.store.base import Base, page, page_after


class Runs(Base):
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
        after = page_after(cursor)
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
        return page(RunRow, rows, limit, "run_id")

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
