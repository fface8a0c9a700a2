"""Run handlers: execute (and stream), read, list, watch, approve/reject, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats.errors

from bus.codec import Codec
from bus.errors import Forbidden, NotFound
from bus.sql import tenant_of
from schemas.agent import (
    TERMINAL_STATUSES,
    ApproveRequest,
    CancelRequest,
    ExecuteRequest,
    RunEvent,
    RunGetRequest,
    RunList,
    RunListRequest,
    RunResult,
    WatchRequest,
)
from schemas.context import Context
from workers.agent import policy, views
from workers.agent.rows import RunRow
from workers.agent.runs import EVENTS_PREFIX, Emit, Runs
from workers.agent.store import Store

#: How long ``cancel`` waits for a running run to stop before answering.
CANCEL_WAIT_S = 3.0
WATCH_POLL_S = 1.0


class RunHandlers:
    def __init__(self, store: Store, runs: Runs, codec: Codec) -> None:
        self.store = store
        self.runs = runs
        self.codec = codec

    async def execute(self, req: ExecuteRequest, ctx: Context) -> RunResult:
        return await self._execute(req, ctx)

    async def _execute(
        self, req: ExecuteRequest, ctx: Context, emit: Emit | None = None
    ) -> RunResult:
        agent_row = await self.store.get_agent(tenant_of(ctx), req.agent_id)
        kwargs: dict[str, Any] = {"emit": emit} if emit else {}
        return await self.runs.start(
            agent_row,
            req.task,
            ctx,
            user=policy.user_of(ctx),
            stream=req.stream or emit is not None,
            background=req.background,
            use_cache=req.cache,
            **kwargs,
        )

    async def stream(self, req: ExecuteRequest, ctx: Context) -> AsyncIterator[RunEvent]:
        async for event in events(lambda emit: self._execute(req, ctx, emit)):
            yield event

    async def _visible_run(self, run_id: str, agent_id: str | None, ctx: Context) -> RunRow:
        run = await self.store.get_run(tenant_of(ctx), run_id)
        if (agent_id and run.agent_id != agent_id) or not (
            policy.may_see(ctx, run.user_id) or policy.may_approve(ctx, run.user_id)
        ):
            raise NotFound(f"run {run_id} not found")
        return await self.runs.expire_if_abandoned(run)

    async def get_run(self, req: RunGetRequest, ctx: Context) -> RunResult:
        run = await self._visible_run(req.run_id, req.agent_id, ctx)
        result = views.run(run, await self.store.steps(tenant_of(ctx), req.run_id))
        if req.include_messages:
            result.input_messages = run.input_messages
        return result

    async def list_runs(self, req: RunListRequest, ctx: Context) -> RunList:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        rows, cursor = await self.store.list_runs(
            tenant,
            req.agent_id,
            user=None if policy.is_admin(ctx) else policy.user_of(ctx),
            status=req.status,
            thread_id=req.thread_id,
            cursor=req.cursor,
            limit=req.limit,
        )
        return RunList(items=[views.run_summary(r) for r in rows], next_cursor=cursor)

    async def approve(self, req: ApproveRequest, ctx: Context) -> RunResult:
        return await self._decide(req, ctx, approved=True)

    async def reject(self, req: ApproveRequest, ctx: Context) -> RunResult:
        return await self._decide(req, ctx, approved=False)

    async def _decide(self, req: ApproveRequest, ctx: Context, *, approved: bool) -> RunResult:
        run = await self._visible_run(req.run_id, req.agent_id, ctx)
        if not policy.may_approve(ctx, run.user_id):
            raise Forbidden(f"needs role {policy.APPROVER} to decide on another user's run")
        return await self.runs.decide(
            run, req.tool_call_id, approved, req.reason, ctx, policy.user_of(ctx)
        )

    async def cancel(self, req: CancelRequest, ctx: Context) -> RunResult:
        tenant = tenant_of(ctx)
        await self._visible_run(req.run_id, req.agent_id, ctx)
        row = await self.runs.cancel(tenant, req.run_id)
        loop = asyncio.get_running_loop()
        until = loop.time() + CANCEL_WAIT_S
        while row.status == "running" and loop.time() < until:
            await asyncio.sleep(0.05)
            row = await self.runs.expire_if_abandoned(await self.store.get_run(tenant, req.run_id))
        return views.run(row, await self.store.steps(tenant, req.run_id))

    async def watch(self, req: WatchRequest, ctx: Context) -> AsyncIterator[RunEvent]:
        tenant = tenant_of(ctx)
        run = await self._visible_run(req.run_id, req.agent_id, ctx)
        # Subscribe before reading what is stored, so nothing falls between the two.
        sub = await self.runs.nc.subscribe(EVENTS_PREFIX + req.run_id)
        try:
            yield RunEvent(event="run", run_id=req.run_id, thread_id=run.thread_id)
            seen: dict[int, str] = {}
            for event in await self._new_steps(tenant, req.run_id, seen):
                yield event
            while run.status not in TERMINAL_STATUSES and run.status != "requires_approval":
                try:
                    msg = await sub.next_msg(timeout=WATCH_POLL_S)
                except nats.errors.TimeoutError:
                    run = await self.runs.expire_if_abandoned(
                        await self.store.get_run(tenant, req.run_id)
                    )
                    for event in await self._new_steps(tenant, req.run_id, seen):
                        yield event
                    continue
                event = RunEvent.model_validate(self.codec.decode(msg.data)[1])
                if event.event == "done":
                    break
                if event.event == "step" and event.step is not None:
                    if seen.get(event.step.index) == event.step.status:
                        continue
                    seen[event.step.index] = event.step.status
                if event.event != "run":
                    yield event
            for event in await self._new_steps(tenant, req.run_id, seen):
                yield event
            final = await self.store.get_run(tenant, req.run_id)
            yield RunEvent(
                event="done",
                run_id=req.run_id,
                thread_id=final.thread_id,
                result=views.run(final, await self.store.steps(tenant, req.run_id)),
            )
        finally:
            if not self.runs.nc.is_closed:
                await sub.unsubscribe()

    async def _new_steps(self, tenant: str, run_id: str, seen: dict[int, str]) -> list[RunEvent]:
        found = []
        for row in await self.store.steps(tenant, run_id):
            if seen.get(row.idx) != row.status:
                seen[row.idx] = row.status
                found.append(RunEvent(event="step", run_id=run_id, step=views.step(row)))
        return found


async def events(work: Callable[[Emit], Awaitable[Any]]) -> AsyncIterator[RunEvent]:
    """Run ``work`` with an emitter and yield what it emits, as it emits it.

    The work's own error (not found, forbidden, ...) is raised after the events it
    produced, so the caller gets the error contract instead of a task-group error.
    """
    queue: asyncio.Queue[RunEvent | None] = asyncio.Queue()
    failure: list[Exception] = []

    async def emit(event: RunEvent) -> None:
        queue.put_nowait(event)

    async def body() -> None:
        try:
            await work(emit)
        except Exception as exc:
            failure.append(exc)
        finally:
            queue.put_nowait(None)

    async with asyncio.TaskGroup() as group:
        group.create_task(body())
        while (event := await queue.get()) is not None:
            yield event
    if failure:
        raise failure[0]
