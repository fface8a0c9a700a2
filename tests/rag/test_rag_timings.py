"""Stage timings of one search (workers/rag/timings.py) and the RAG pool's session."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from workers.rag import timings
from workers.rag.service import IO_CONCURRENCY, session


async def test_stages_of_concurrent_tasks_add_to_the_request_record():
    async def leg(name: str) -> None:
        with timings.stage(name):
            await asyncio.sleep(0.01)
        timings.add("rows.n", 2)

    async def request() -> dict[str, float]:
        record = timings.collect()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(leg("vector"))
            tg.create_task(leg("keyword"))
        return record

    record = await asyncio.create_task(request())
    assert set(record) == {"vector", "keyword", "rows.n"}
    assert record["vector"] >= 0.01 and record["keyword"] >= 0.01
    assert record["rows.n"] == 4


async def test_outside_a_recording_request_stages_record_nothing():
    async def elsewhere() -> None:
        with timings.stage("vector"):
            pass
        timings.add("rows.n", 1)

    record = await asyncio.create_task(_recording())
    await asyncio.create_task(elsewhere())  # a new task: its own, empty context
    assert record == {}


async def _recording() -> dict[str, float]:
    return timings.collect()


@pytest.mark.usefixtures("rag_mesh")
async def test_rag_connections_plan_each_statement_and_read_ahead_in_bitmap_scans(settings):
    conn = await asyncpg.connect(settings.database_url)
    try:
        await session(conn)
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        assert await conn.fetchval("SHOW effective_io_concurrency") == str(IO_CONCURRENCY)
    finally:
        await conn.close()
