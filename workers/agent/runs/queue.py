"""Background runs: the JetStream queue (stream ``AGENT_RUNS``) and the driver's lease.

A queued run is one job message; whichever replica's consumer takes it claims the run
(``queued`` → ``running``) with a lease that outlives the run's own timeout. A replica
that dies mid-run leaves the message unacknowledged: on redelivery the next replica takes
the run over once the lease has run out, and a reader of an abandoned run (its lease
gone, no driver) sees it ``failed``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from nats.js import JetStreamContext
from pydantic import BaseModel

from bus.codec import Codec
from bus.errors import NotFound
from bus.jetstream import publish
from schemas.agent import Agent
from schemas.context import Context
from workers.agent import views
from workers.agent.rows import RunRow
from workers.agent.runs.driver import Driver
from workers.agent.runs.state import error, no_emit
from workers.agent.store import Store

_log = structlog.get_logger(__name__)

#: Subject of queued background runs (stream AGENT_RUNS).
JOB_SUBJECT = "agent.runs.execute"
#: A driving replica's lease on a run outlives the run's own timeout by this much.
LEASE_GRACE_S = 30.0


class RunJob(BaseModel):
    run_id: str


def lease_for(agent: Agent) -> datetime:
    """Until when a replica that starts driving a run of ``agent`` holds it."""
    return datetime.now(UTC) + timedelta(seconds=agent.limits.timeout_seconds + LEASE_GRACE_S)


class Queue:
    def __init__(self, store: Store, js: JetStreamContext, codec: Codec, driver: Driver) -> None:
        self.store = store
        self.js = js
        self.codec = codec
        self.driver = driver

    async def enqueue(self, run: RunRow, ctx: Context) -> None:
        # The job carries who asked (tenant, user, roles) but no deadline: the run's own
        # timeout starts when a worker picks it up.
        job_ctx = ctx.model_copy(update={"deadline": None})
        steps = await self.store.steps(str(run.tenant_id), run.run_id)
        await publish(
            self.js,
            JOB_SUBJECT,
            RunJob(run_id=run.run_id),
            job_ctx,
            msg_id=f"{run.run_id}:{len(steps)}",
            codec=self.codec,
        )

    async def run_job(self, job: RunJob, ctx: Context) -> None:
        """A queued run, picked up by this replica's JetStream consumer."""
        assert ctx.tenant
        try:
            run = await self.store.get_run(ctx.tenant, job.run_id)
        except NotFound:
            _log.warning("job_for_missing_run", run_id=job.run_id)
            return
        if run.cancel_requested and run.status == "queued":
            await self.store.transition(
                ctx.tenant,
                job.run_id,
                ["queued"],
                "cancelled",
                error=error("cancelled", "cancelled before it started"),
            )
            return
        agent_row = await self.store.get_agent(ctx.tenant, run.agent_id)
        lease = lease_for(views.agent(agent_row))
        claimed = await self.store.transition(
            ctx.tenant, job.run_id, ["queued"], "running", lease_until=lease
        )
        if claimed is None:
            claimed = await self._take_over(ctx.tenant, run, lease)
        if claimed is None:
            return  # someone else drives it, or it has ended: nothing to do
        await self.driver.drive(claimed, agent_row, ctx, no_emit)

    async def _take_over(self, tenant: str, run: RunRow, lease: datetime) -> RunRow | None:
        """A redelivered job whose driver died (its lease ran out) continues here."""
        lease_until = run.lease_until
        if run.status != "running" or lease_until is None or lease_until > datetime.now(UTC):
            return None
        return await self.store.take_over(tenant, run.run_id, lease)

    async def job_failed(self, job: Any, ctx: Context | None, reason: str) -> None:
        if job is None or ctx is None or not ctx.tenant:
            return
        await self.store.transition(
            ctx.tenant,
            job.run_id,
            ["queued", "running"],
            "failed",
            error=error("job_failed", reason[:500]),
        )

    async def expire_if_abandoned(self, run: RunRow) -> RunRow:
        """A ``running`` run whose lease ran out has no driver any more: it failed."""
        lease_until = run.lease_until
        if run.status == "running" and lease_until and lease_until < datetime.now(UTC):
            row = await self.store.transition(
                run.tenant_id,
                run.run_id,
                ["running"],
                "failed",
                error=error("abandoned", "the worker driving this run stopped"),
            )
            return row or await self.store.get_run(run.tenant_id, run.run_id)
        return run
