"""Long-term memory items with their embeddings (``agent.memories``)."""

from __future__ import annotations

from collections.abc import Sequence

from bus.context import new_id
from bus.sql import row_of, vector_literal
from workers.agent.rows import (
    Fields,
    MemoryRow,
)
from workers.agent.store.base import Base, page, page_after


class Memories(Base):
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
        after = page_after(cursor)
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
        return page(MemoryRow, rows, limit, "memory_id")

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
