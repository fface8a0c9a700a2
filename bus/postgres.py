"""asyncpg pools with timeouts, and the migration runner every worker uses at start.

Every worker opens its pool with :func:`create_database` (one data-layer policy): bounded
connect, acquire and command times; ``json``/``jsonb`` columns and parameters as Python
values (pass a ``dict``/``list`` to ``$n::jsonb``, never ``json.dumps`` of it); released
connections kept as they are (no reset query). Shared SQL helpers (cursors, vectors, the
tenant) are in :mod:`bus.sql`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from importlib.resources.abc import Traversable

import asyncpg
import structlog

from bus.errors import Unavailable

_log = structlog.get_logger(__name__)

COMMAND_TIMEOUT_S = 10.0
ACQUIRE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0


class Database:
    """An asyncpg pool whose acquire and commands are bounded in time."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            conn = await self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
        except TimeoutError:
            raise Unavailable("no database connection available in time") from None
        try:
            yield conn
        finally:
            await self.pool.release(conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def close(self) -> None:
        await self.pool.close()


#: A per-connection hook (asyncpg's ``init``/``reset``).
ConnectionHook = Callable[[asyncpg.Connection], Awaitable[None]]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release hook that sends nothing: see :func:`create_database`."""


async def json_codecs(conn: asyncpg.Connection) -> None:
    """Decode ``json``/``jsonb`` to Python values and encode parameters from them."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=_dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


async def create_database(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    init: ConnectionHook | None = None,
    reset: ConnectionHook | None = None,
) -> Database:
    """The pool of a worker: jsonb/json codecs on every connection, then ``init``.

    ``reset`` runs when a connection goes back to the pool. By default it sends nothing:
    asyncpg's own reset (``RESET ALL``, ``UNLISTEN *``, unlock advisory locks, ...) costs
    one more round trip per request, and workers keep no session state on pooled
    connections (no ``SET``/``LISTEN``, advisory locks only inside :func:`migrate`, which
    unlocks in ``finally``), so the cleanup asyncpg always does on release — rolling back
    a transaction left open — is all a release needs. A worker that does keep session
    state passes its own ``reset``.
    """

    async def setup(conn: asyncpg.Connection) -> None:
        await json_codecs(conn)
        if init is not None:
            await init(conn)

    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=COMMAND_TIMEOUT_S,
        timeout=CONNECT_TIMEOUT_S,
        init=setup,
        reset=reset or _keep_session,
    )
    return Database(pool)


def _lock_key(schema: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"migrate:{schema}".encode()).digest()[:8], "big", signed=True
    )


async def migrate(db: Database, schema: str, migrations: Traversable) -> list[str]:
    """Apply the ordered ``*.sql`` files in ``migrations`` once each, under an advisory lock.

    Each file runs in its own transaction and is recorded in ``<schema>.schema_migrations``;
    replicas starting together wait on the lock instead of racing.
    """
    files = sorted(
        (f for f in migrations.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name
    )
    applied: list[str] = []
    async with db.connection() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _lock_key(schema))
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["version"]
                for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
            }
            for f in files:
                if f.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f.read_text())
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', f.name
                    )
                applied.append(f.name)
                _log.info("migration_applied", schema=schema, version=f.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(schema))
    return applied


def migrations_of(package: str) -> Traversable:
    """The ``migrations`` folder shipped inside a worker package."""
    return resources.files(package) / "migrations"
