"""bus.lifespan: a worker's pool is migrated before and closed after its background loops,
which stop together when the worker stops and end it when one of them fails."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest

from bus.lifespan import background, database
from bus.settings import Settings


async def test_leaving_background_stops_every_loop_and_waits_for_them():
    finished: list[str] = []

    def loop(name: str):
        async def run(stop: asyncio.Event) -> None:
            await stop.wait()
            await asyncio.sleep(0.05)  # in-flight work finishing after the signal
            finished.append(name)

        return run

    stopping = asyncio.Event()
    async with background(stopping, loop("consumer"), loop("sweeper")):
        await asyncio.sleep(0)
        assert not stopping.is_set() and finished == []
    assert stopping.is_set()
    assert sorted(finished) == ["consumer", "sweeper"]


async def test_a_failing_loop_ends_the_worker_with_its_error():
    async def broken(_stop: asyncio.Event) -> None:
        raise ValueError("consumer broke")

    stopping = asyncio.Event()
    with pytest.raises(ExceptionGroup) as caught:
        async with background(stopping, broken):
            await asyncio.sleep(30)  # cancelled by the task group, not waited out
    assert caught.group_contains(ValueError, match="consumer broke")
    assert stopping.is_set()


async def test_database_applies_the_migrations_then_closes_the_pool(settings, tmp_path: Path):
    package = f"lifespan_{uuid.uuid4().hex[:8]}"
    (tmp_path / package / "migrations").mkdir(parents=True)
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "migrations" / "0001_t.sql").write_text(
        f"CREATE TABLE {package}.t (id integer PRIMARY KEY);"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        async with database(settings, package, package, max_size=2) as db:
            async with db.connection() as conn:
                await conn.execute(f"INSERT INTO {package}.t VALUES (1)")
                applied = await conn.fetchval(f"SELECT count(*) FROM {package}.schema_migrations")
            assert applied == 1
        assert db.pool.is_closing()
    finally:
        sys.path.remove(str(tmp_path))


async def test_database_without_a_url_says_which_setting_is_missing(settings: Settings):
    with pytest.raises(RuntimeError, match="DATABASE_URL is not set"):
        async with database(settings.model_copy(update={"database_url": None})):
            pass
