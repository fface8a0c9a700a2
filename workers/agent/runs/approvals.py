"""Decisions on paused tool calls, and cancelling a run.

A run that paused in ``requires_approval`` resumes where it stopped once a person approves
or rejects the paused call: a background run goes back on the queue, a foreground one is
driven on by the replica that received the decision.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bus.errors import Conflict, NotFound
from schemas.agent import RunResult
from schemas.context import Context
from workers.agent import views
from workers.agent.rows import RunRow
from workers.agent.runs.driver import Driver
from workers.agent.runs.queue import Queue, lease_for
from workers.agent.runs.state import no_emit
from workers.agent.store import Store


class Approvals:
    def __init__(self, store: Store, queue: Queue, driver: Driver) -> None:
        self.store = store
        self.queue = queue
        self.driver = driver

    async def decide(
        self,
        run: RunRow,
        tool_call_id: str | None,
        approved: bool,
        reason: str | None,
        ctx: Context,
        by: str,
    ) -> RunResult:
        tenant = str(run.tenant_id)
        waiting = [
            s
            for s in await self.store.steps(tenant, run.run_id)
            if s.status == "pending_approval" and s.approval is None
        ]
        if run.status != "requires_approval" or not waiting:
            raise Conflict(f"run {run.run_id} is {run.status}, not waiting for approval")
        if tool_call_id is None:
            step = waiting[0]
        else:
            match = [s for s in waiting if s.tool_call_id == tool_call_id]
            if not match:
                raise NotFound(f"no paused tool call {tool_call_id} in run {run.run_id}")
            step = match[0]
        agent_row = await self.store.get_agent(tenant, run.agent_id)
        agent = views.agent(agent_row)
        next_status = "queued" if run.background else "running"
        claimed = await self.store.transition(
            tenant,
            run.run_id,
            ["requires_approval"],
            next_status,
            lease_until=None if run.background else lease_for(agent),
        )
        if claimed is None:
            raise Conflict(f"run {run.run_id} was decided or cancelled meanwhile")
        decision = {
            "decision": "approved" if approved else "rejected",
            "by": by,
            "reason": reason,
            "at": datetime.now(UTC).isoformat(),
        }
        await self.store.update_step(
            tenant, run.run_id, step.idx, only_status="pending_approval", approval=decision
        )
        if run.background:
            await self.queue.enqueue(claimed, ctx)
            return views.run(claimed, await self.store.steps(tenant, run.run_id))
        return await self.driver.drive(claimed, agent_row, ctx, no_emit)

    async def cancel(self, tenant: str, run_id: str) -> RunRow:
        row = await self.store.request_cancel(tenant, run_id)
        if row.status == "running":
            await self.driver.signal_cancel(run_id)
        return row
