"""Memory handlers: an agent's long-term memory items (add, list, search, delete)."""

from __future__ import annotations

from bus.sql import tenant_of
from schemas.agent import (
    Deleted,
    MemoryAddRequest,
    MemoryDeleteRequest,
    MemoryItem,
    MemoryList,
    MemoryListRequest,
    MemorySearchRequest,
)
from schemas.context import Context
from workers.agent import views
from workers.agent.remote import Remote
from workers.agent.store import Store


class Memory:
    def __init__(self, store: Store, remote: Remote) -> None:
        self.store = store
        self.remote = remote

    async def add_memory(self, req: MemoryAddRequest, ctx: Context) -> MemoryItem:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        vector = (await self.remote.embed([req.text], ctx))[0]
        row = await self.store.insert_memory(
            tenant, req.agent_id, req.text, vector, req.metadata, "api", None
        )
        return views.memory(row)

    async def list_memories(self, req: MemoryListRequest, ctx: Context) -> MemoryList:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        rows, cursor = await self.store.list_memories(tenant, req.agent_id, req.cursor, req.limit)
        return MemoryList(items=[views.memory(r) for r in rows], next_cursor=cursor)

    async def search_memories(self, req: MemorySearchRequest, ctx: Context) -> MemoryList:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        vector = (await self.remote.embed([req.query], ctx))[0]
        rows = await self.store.search_memories(tenant, req.agent_id, vector, req.top_k)
        return MemoryList(items=[views.memory(r) for r in rows])

    async def delete_memory(self, req: MemoryDeleteRequest, ctx: Context) -> Deleted:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        return Deleted(deleted=await self.store.delete_memory(tenant, req.agent_id, req.memory_id))
