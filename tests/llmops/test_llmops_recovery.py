"""Durability: the LLMOps worker killed (SIGKILL) while the stream holds 10,000 events,
then restarted — every event stored exactly once, duplicates included."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from bus import jetstream
from bus.context import new_id
from bus.settings import Settings
from schemas.llmops import OPERATION_SUBJECT
from tests.llmops_support import ctx
from tests.processes import StartWorker, worker_processes

pytestmark = pytest.mark.timeout(180)

EVENTS = 10_000
DUPLICATES = 500


@pytest.fixture
def worker_process(settings: Settings, tmp_path: Path) -> Iterator[StartWorker]:
    with worker_processes(settings, tmp_path, "llmops") as start:
        yield start


def _event(i: int, tenant: str) -> dict[str, object]:
    return {
        "event_id": f"{tenant}-{i}",
        "time_ms": int(datetime.now(UTC).timestamp() * 1000) - i,
        "operation": "generate",
        "tenant": tenant,
        "user": f"user-{i % 7}",
        "model": f"model-{i % 3}",
        "provider": "openai",
        "tokens_in": 10,
        "tokens_out": 2,
        "cost": 0.001,
        "latency_ms": 50.0 + i % 100,
        "status": "ok",
    }


async def _count(dsn: str, tenant: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM llmops.operations WHERE tenant_id = $1", tenant
        )
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


async def _wait(dsn: str, tenant: str, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = await _count(dsn, tenant)
        if n >= at_least or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.05)


async def test_worker_killed_with_a_full_stream_stores_every_event_once(
    env, settings, worker_process
):
    tenant = f"crash-{new_id()[:8]}"
    c = ctx(tenant)
    sem = asyncio.Semaphore(200)

    async def publish(i: int, msg_id: str) -> None:
        async with sem:
            await jetstream.publish(env.js, OPERATION_SUBJECT, _event(i, tenant), c, msg_id=msg_id)

    async with asyncio.TaskGroup() as tg:
        for i in range(EVENTS):
            tg.create_task(publish(i, f"{tenant}-{i}"))
        # The same events again under other message ids (JetStream keeps them): only the
        # store's idempotency keeps them from being counted twice.
        for i in range(DUPLICATES):
            tg.create_task(publish(i * 13 % EVENTS, new_id()))

    dsn = settings.database_url
    assert dsn
    first = worker_process()
    done = await _wait(dsn, tenant, 1, timeout=90)
    first.kill()  # SIGKILL: the batch in hand stays unacknowledged
    first.wait(10)
    assert 0 < done < EVENTS, f"{done} stored before the kill: the test proved nothing"
    worker_process()
    assert await _wait(dsn, tenant, EVENTS, timeout=120) == EVENTS
    await asyncio.sleep(2)  # anything stored twice would show up now
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT request_id) AS ids"
            " FROM llmops.operations WHERE tenant_id = $1",
            tenant,
        )
        assert (row["n"], row["ids"]) == (EVENTS, EVENTS)
        for table in ("rollup_hour", "rollup_hour_nouser", "rollup_day"):
            total = await conn.fetchval(
                f"SELECT sum(requests) FROM llmops.{table} WHERE tenant_id = $1", tenant
            )
            assert total == EVENTS, table
    finally:
        await conn.close()
