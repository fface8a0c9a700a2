"""JobConsumer under trouble (issue 10, items 2 and 11): a slow job does not hold back
the jobs fetched with it, and a failure whose report fails on the last delivery is
reported later instead of being dropped."""

from __future__ import annotations

import asyncio
import uuid

from pydantic import BaseModel

from bus.context import new_context
from bus.errors import Unavailable
from bus.jetstream import ConsumerSpec, JobConsumer, publish


class Job(BaseModel):
    job_id: str
    seconds: float = 0.0
    fail: bool = False


async def _run(env, spec: ConsumerSpec, handle, failed, jobs: list[Job], until: asyncio.Event):
    consumer = JobConsumer(env.js, spec, Job, handle, on_failed=failed)
    for job in jobs:
        await publish(env.js, spec.filter_subject, job, new_context("acme"), msg_id=job.job_id)
    stop = asyncio.Event()
    runner = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.wait_for(until.wait(), 60)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)


async def test_a_slow_job_does_not_hold_back_the_others(env):
    tag = uuid.uuid4().hex[:8]
    spec = ConsumerSpec("INGEST", f"slow{tag}", f"ingest.jobs.slow{tag}", batch=2, backoff=(0.1,))
    quick_done: list[str] = []
    slow_release = asyncio.Event()
    all_quick = asyncio.Event()

    async def handle(job: Job, ctx) -> None:
        if job.seconds:
            await slow_release.wait()  # holds its slot until the quick ones are through
            return
        quick_done.append(job.job_id)
        if len(quick_done) == 6:
            all_quick.set()
            slow_release.set()

    async def failed(job, ctx, reason) -> None:  # pragma: no cover
        raise AssertionError(reason)

    jobs = [Job(job_id=f"slow-{tag}", seconds=1)] + [Job(job_id=f"q{i}-{tag}") for i in range(6)]
    await _run(env, spec, handle, failed, jobs, all_quick)
    assert len(quick_done) == 6  # with batch barriers they would wait behind the slow one


async def test_a_failure_report_that_fails_on_the_last_delivery_is_retried(env):
    tag = uuid.uuid4().hex[:8]
    spec = ConsumerSpec(
        "INGEST", f"report{tag}", f"ingest.jobs.report{tag}", max_deliver=2, backoff=(0.05,)
    )
    calls = 0
    reports: list[str] = []
    reported = asyncio.Event()

    async def handle(job: Job, ctx) -> None:
        raise Unavailable("database down")

    async def failed(job, ctx, reason: str) -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:  # the database that records failures is down too, for a while
            raise Unavailable("cannot record")
        assert job is not None and job.job_id == f"dead-{tag}" and ctx.tenant == "acme"
        reports.append(reason)
        reported.set()

    await _run(env, spec, handle, failed, [Job(job_id=f"dead-{tag}")], reported)
    assert reports == ["unavailable: database down"]
    info = await env.js.consumer_info("INGEST", spec.durable)
    assert info.num_pending == 0 and info.num_ack_pending == 0
