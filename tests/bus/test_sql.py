"""The data-layer policy: one pool factory with json codecs, one set of SQL helpers."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from bus.errors import InvalidRequest, Unauthenticated
from bus.postgres import create_database
from bus.sql import cursor_time, decode_cursor, encode_cursor, tenant_of, vector_literal
from schemas.context import Context


def test_a_cursor_round_trips_its_sort_key() -> None:
    at = datetime(2026, 12, 3, 8, 0, 1, 250, tzinfo=UTC)
    created, key = decode_cursor(encode_cursor(at, "doc-1"), 2)
    assert (cursor_time(created), key) == (at, "doc-1")


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 !",
        base64.urlsafe_b64encode(b"{}").decode(),
        base64.urlsafe_b64encode(b'["2026-01-01T00:00:00"]').decode(),
        base64.urlsafe_b64encode(b"[1, 2, 3]").decode(),
    ],
)
def test_a_malformed_cursor_is_an_invalid_request(cursor: str) -> None:
    with pytest.raises(InvalidRequest):
        decode_cursor(cursor, 2)


@pytest.mark.parametrize("value", ["yesterday", 7, None])
def test_a_cursor_time_that_is_not_a_time_is_an_invalid_request(value: object) -> None:
    with pytest.raises(InvalidRequest):
        cursor_time(value)


def test_vector_literal_is_pgvector_text() -> None:
    assert vector_literal([0.5, -1.0, 1 / 3]) == "[0.5,-1,0.3333333]"


def test_tenant_of_a_context_without_one_is_unauthenticated() -> None:
    assert tenant_of(Context(tenant="acme")) == "acme"
    with pytest.raises(Unauthenticated):
        tenant_of(Context())
    with pytest.raises(Unauthenticated):
        tenant_of(None)


async def test_the_pool_reads_and_writes_jsonb_as_python_values(settings) -> None:
    seen: list[str] = []

    async def init(conn) -> None:
        seen.append("init")

    db = await create_database(settings.database_url, max_size=1, init=init)
    try:
        async with db.connection() as conn:
            value = {"a": [1, "two", None], "b": {"c": True}}
            out = await conn.fetchval("SELECT $1::jsonb", value)
            text = await conn.fetchval("SELECT ($1::jsonb)::text", value)
            plain = await conn.fetchval("SELECT '[1, 2]'::json")
    finally:
        await db.close()
    assert out == value and text.startswith("{") and plain == [1, 2]
    assert seen == ["init"]  # the caller's init runs after the codecs, once per connection
