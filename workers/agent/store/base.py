"""Postgres storage of the Agent Service (schema ``agent``): what every part shares.

Every statement filters on ``tenant_id``: a row of another tenant is indistinguishable
from a row that does not exist. Rows come back as the frozen dataclasses of ``rows.py``
(jsonb decoded by the pool's codecs); ``views`` turns them into the contract models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from bus.postgres import Database, migrate, migrations_of
from bus.sql import cursor_time, decode_cursor, encode_cursor, row_of

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SCHEMA = "agent"
T = TypeVar("T", bound="DataclassInstance")


async def prepare(db: Database) -> None:
    """Create the ``vector`` extension (services race for it at start), then migrate."""
    for attempt in range(10):
        try:
            async with db.connection() as conn:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            break
        except (asyncpg.UniqueViolationError, asyncpg.DuplicateObjectError):
            # Another service created it in the same instant; look again.
            await asyncio.sleep(0.1 * (attempt + 1))
    await migrate(db, SCHEMA, migrations_of("workers.agent"))


def page_after(cursor: str | None) -> tuple[datetime, str] | None:
    """The (created_at, id) a page cursor points after, or None for the first page."""
    if not cursor:
        return None
    created, key = decode_cursor(cursor, 2)
    return cursor_time(created), str(key)


def page(
    cls: type[T], rows: Sequence[asyncpg.Record], limit: int, key: str
) -> tuple[list[T], str | None]:
    page = rows[:limit]
    more = len(rows) > limit
    cursor = encode_cursor(page[-1]["created_at"], page[-1][key]) if more else None
    return [row_of(cls, r) for r in page], cursor


def like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Base:
    def __init__(self, db: Database) -> None:
        self.db = db
