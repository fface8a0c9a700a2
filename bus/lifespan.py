"""The steps every stateful worker's lifespan repeats, as two async context managers.

A worker that keeps its state in Postgres and runs JetStream consumers or sweeps does,
in this order: open its pool and apply its migrations; build its service; start its
background loops in one task group; yield its :class:`~bus.worker.Worker`; and on the
way out signal the loops to stop, wait for them (a consumer finishes its in-flight jobs),
and only then close the pool::

    @asynccontextmanager
    async def lifespan(env: WorkerEnv) -> AsyncIterator[Worker]:
        async with database(env.settings, "ml", "workers.ml") as db:
            stopping = asyncio.Event()
            svc = MLService(db, env.js, stopping=stopping)
            consumer = JobConsumer(env.js, TRAIN_CONSUMER, TrainJob, svc.run_job, ...)
            async with background(stopping, consumer.run, svc.sweep):
                yield build_worker(svc)

A loop is any ``async def loop(stop: asyncio.Event)`` that returns soon after ``stop``
is set (``JobConsumer.run``, ``BatchConsumer.run``, a sweeper). The service usually
receives the same event, to stop waiting on retries once the worker is stopping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from bus.postgres import ConnectionHook, Database, create_database, migrate, migrations_of
from bus.settings import Settings

#: A background loop of a worker: runs until the event is set.
Loop = Callable[[asyncio.Event], Coroutine[Any, Any, Any]]

__all__ = ["Loop", "background", "database"]


@asynccontextmanager
async def database(
    settings: Settings,
    schema: str | None = None,
    migrations: str | None = None,
    *,
    max_size: int = 10,
    init: ConnectionHook | None = None,
) -> AsyncIterator[Database]:
    """The worker's pool (``bus.postgres.create_database``), migrated, closed on exit.

    ``schema`` and ``migrations`` (the package holding ``migrations/*.sql``, e.g.
    ``"workers.ml"``) go to :func:`bus.postgres.migrate`; without them nothing is
    migrated (a worker with its own preparation runs it on the yielded pool). The pool
    is closed even if migrating fails. ``init`` runs on every new connection (type codecs,
    e.g. pgvector's); connections opened before the migrations created the types are
    replaced once the migrations ran.
    """
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set")
    db = await create_database(settings.database_url, max_size=max_size, init=init)
    try:
        if schema is not None and migrations is not None:
            await migrate(db, schema, migrations_of(migrations))
            if init is not None:
                await db.pool.expire_connections()
        yield db
    finally:
        await db.close()


@asynccontextmanager
async def background(stopping: asyncio.Event, *loops: Loop) -> AsyncIterator[None]:
    """Run ``loops`` in one task group while the body runs; on exit set ``stopping``
    and wait for every loop to return. A loop that fails ends the body (task group)."""
    async with asyncio.TaskGroup() as group:
        for loop in loops:
            group.create_task(loop(stopping))
        try:
            yield
        finally:
            stopping.set()
