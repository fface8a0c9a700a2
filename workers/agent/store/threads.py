"""Chat threads and their messages (``agent.threads``, ``agent.messages``)."""

from __future__ import annotations

from bus.context import new_id
from bus.errors import NotFound
from bus.sql import row_of
from workers.agent.rows import MessageRow, ThreadRow
from workers.agent.store.base import Base, page, page_after


class Threads(Base):
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
        after = page_after(cursor)
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
        return page(ThreadRow, rows, limit, "thread_id")

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
