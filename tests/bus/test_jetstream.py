"""Streams, deduplicated publishing and durable job consumers on a real JetStream."""

from __future__ import annotations

import asyncio
import uuid

from pydantic import BaseModel

from bus.context import new_context
from bus.errors import NotFound, Unavailable
from bus.jetstream import STREAMS, ConsumerSpec, JobConsumer, ensure_streams, publish


class Job(BaseModel):
    job_id: str
    fail_times: int = 0
    permanent: bool = False


async def test_streams_exist_and_ensure_is_idempotent(env):
    await ensure_streams(env.js)
    await ensure_streams(env.js)
    for config in STREAMS:
        info = await env.js.stream_info(config.name)
        assert info.config.subjects == config.subjects


async def test_same_msg_id_twice_stores_one_message(env):
    ctx = new_context("acme")
    subject = f"events.domain.test.{uuid.uuid4().hex}"
    msg_id = uuid.uuid4().hex
    first = await publish(env.js, subject, {"n": 1}, ctx, msg_id=msg_id)
    second = await publish(env.js, subject, {"n": 1}, ctx, msg_id=msg_id)
    assert second.duplicate and not first.duplicate
    assert second.seq == first.seq
    sub = await env.js.subscribe(subject, ordered_consumer=True)
    got = [await sub.next_msg(timeout=2)]
    try:
        got.append(await sub.next_msg(timeout=0.5))
    except Exception:
        pass
    await sub.unsubscribe()
    assert len(got) == 1


async def _run_consumer(env, durable: str, subject: str, jobs: list[Job], expect: int):
    """Publish ``jobs``, run a consumer until ``expect`` outcomes, return them."""
    outcomes: dict[str, list[str]] = {}
    attempts: dict[str, int] = {}
    done = asyncio.Event()

    def record(job_id: str, what: str) -> None:
        outcomes.setdefault(job_id, []).append(what)
        if sum(len(v) for v in outcomes.values()) >= expect:
            done.set()

    async def handle(job: Job, ctx) -> None:
        attempts[job.job_id] = attempts.get(job.job_id, 0) + 1
        assert ctx.tenant == "acme"
        if job.permanent:
            raise NotFound("document vanished")
        if attempts[job.job_id] <= job.fail_times:
            raise Unavailable("database down")
        record(job.job_id, "ok")

    async def failed(job, ctx, reason: str) -> None:
        record(job.job_id if job else "?", f"failed: {reason}")

    spec = ConsumerSpec("INGEST", durable, subject, max_deliver=3, backoff=(0.05,), batch=4)
    consumer = JobConsumer(env.js, spec, Job, handle, on_failed=failed)
    for job in jobs:
        await publish(env.js, subject, job, new_context("acme"), msg_id=job.job_id)
    stop = asyncio.Event()
    runner = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(done.wait(), 20)
    stop.set()
    await asyncio.wait_for(runner, 5)
    return outcomes, attempts


async def test_consumer_retries_then_succeeds_or_reports_exhausted_jobs(env):
    tag = uuid.uuid4().hex[:8]
    subject = f"ingest.jobs.test{tag}"
    jobs = [
        Job(job_id=f"ok-{tag}"),
        Job(job_id=f"flaky-{tag}", fail_times=2),
        Job(job_id=f"dead-{tag}", fail_times=99),
        Job(job_id=f"perm-{tag}", permanent=True),
    ]
    outcomes, attempts = await _run_consumer(env, f"test{tag}", subject, jobs, expect=4)
    assert outcomes[f"ok-{tag}"] == ["ok"]
    assert outcomes[f"flaky-{tag}"] == ["ok"] and attempts[f"flaky-{tag}"] == 3
    assert outcomes[f"dead-{tag}"] == ["failed: unavailable: database down"]
    assert attempts[f"dead-{tag}"] == 3
    assert outcomes[f"perm-{tag}"] == ["failed: not_found: document vanished"]
    assert attempts[f"perm-{tag}"] == 1
    # Work queue: everything was acked or terminated, nothing is left behind.
    info = await env.js.consumer_info("INGEST", f"test{tag}")
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_poison_message_is_reported_not_retried(env):
    tag = uuid.uuid4().hex[:8]
    subject = f"ingest.jobs.poison{tag}"
    reported: list[str] = []
    done = asyncio.Event()

    async def handle(job, ctx) -> None:  # pragma: no cover - must not be reached
        raise AssertionError("poison reached the handler")

    async def failed(job, ctx, reason: str) -> None:
        reported.append(reason)
        done.set()

    spec = ConsumerSpec("INGEST", f"poison{tag}", subject, max_deliver=3, backoff=(0.05,))
    consumer = JobConsumer(env.js, spec, Job, handle, on_failed=failed)
    await env.js.publish(subject, b"\x00garbage", headers={"Nats-Msg-Id": tag})
    stop = asyncio.Event()
    runner = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(done.wait(), 10)
    stop.set()
    await asyncio.wait_for(runner, 5)
    assert reported and reported[0].startswith("invalid_request")
