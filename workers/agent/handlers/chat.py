"""Chat handlers: a turn in a thread (and its stream), threads and their messages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from bus.errors import Conflict, NotFound
from bus.sql import tenant_of
from schemas.agent import (
    ChatRequest,
    ChatResponse,
    Deleted,
    RunEvent,
    Thread,
    ThreadDeleteRequest,
    ThreadGetRequest,
    ThreadList,
    ThreadListRequest,
)
from schemas.context import Context
from workers.agent import policy, views
from workers.agent.handlers.runs import events
from workers.agent.rows import ThreadRow
from workers.agent.runs import Emit, Runs
from workers.agent.store import Store

#: Newest thread messages considered for a chat turn's history (then trimmed to fit).
MAX_HISTORY_MESSAGES = 400


class Chat:
    def __init__(self, store: Store, runs: Runs) -> None:
        self.store = store
        self.runs = runs

    async def chat(self, req: ChatRequest, ctx: Context) -> ChatResponse:
        return await self._chat(req, ctx)

    async def _chat(self, req: ChatRequest, ctx: Context, emit: Emit | None = None) -> ChatResponse:
        tenant = tenant_of(ctx)
        user = policy.user_of(ctx)
        agent_row = await self.store.get_agent(tenant, req.agent_id)
        if agent_row.status != "active":
            raise Conflict(f"agent {req.agent_id} is {agent_row.status}; only active agents run")
        if req.thread_id:
            thread = await self.store.get_thread(tenant, req.thread_id)
            if thread.agent_id != req.agent_id or thread.user_id != user:
                raise NotFound(f"thread {req.thread_id} not found")
            # Only the newest messages can fit any window; older ones are not even counted.
            earlier = [
                {"role": m.role, "content": m.content}
                for m in await self.store.messages(
                    tenant, thread.thread_id, last=MAX_HISTORY_MESSAGES
                )
            ]
        else:
            thread = await self.store.create_thread(tenant, req.agent_id, user, req.message[:80])
            earlier = []
        kwargs: dict[str, Any] = {"emit": emit} if emit else {}
        result = await self.runs.start(
            agent_row,
            req.message,
            ctx,
            user=user,
            thread_id=thread.thread_id,
            history_messages=earlier,
            stream=emit is not None,
            **kwargs,
        )
        run = await self.store.get_run(tenant, result.run_id)
        return ChatResponse(
            thread_id=thread.thread_id,
            run_id=result.run_id,
            reply=result.output if result.status == "succeeded" else None,
            status=result.status,
            pending_approvals=result.pending_approvals,
            citations=result.citations,
            trimmed_messages=run.trimmed_messages,
        )

    async def chat_stream(self, req: ChatRequest, ctx: Context) -> AsyncIterator[RunEvent]:
        async for event in events(lambda emit: self._chat(req, ctx, emit)):
            yield event

    async def _thread(self, thread_id: str, agent_id: str | None, ctx: Context) -> ThreadRow:
        thread = await self.store.get_thread(tenant_of(ctx), thread_id)
        if (agent_id and thread.agent_id != agent_id) or not policy.may_see(ctx, thread.user_id):
            raise NotFound(f"thread {thread_id} not found")
        return thread

    async def list_threads(self, req: ThreadListRequest, ctx: Context) -> ThreadList:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        rows, cursor = await self.store.list_threads(
            tenant,
            req.agent_id,
            None if policy.is_admin(ctx) else policy.user_of(ctx),
            req.cursor,
            req.limit,
        )
        return ThreadList(items=[views.thread(r) for r in rows], next_cursor=cursor)

    async def get_thread(self, req: ThreadGetRequest, ctx: Context) -> Thread:
        thread = await self._thread(req.thread_id, req.agent_id, ctx)
        return views.thread(thread, await self.store.messages(tenant_of(ctx), req.thread_id))

    async def delete_thread(self, req: ThreadDeleteRequest, ctx: Context) -> Deleted:
        await self._thread(req.thread_id, req.agent_id, ctx)
        return Deleted(deleted=await self.store.delete_thread(tenant_of(ctx), req.thread_id))
