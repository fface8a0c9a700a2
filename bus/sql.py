"""Helpers every worker's SQL uses: keyset cursors, pgvector literals, the tenant.

One copy of each, so cursors, vectors and tenant checks behave the same in every
service (new services — LLMOps, ML, Prompt Generator — use these too):

* :func:`encode_cursor` / :func:`decode_cursor` — an opaque page cursor holding the sort
  key of the last row returned (keyset pagination: ``WHERE (created_at, id) < ($n, $m)``).
  Values are JSON (datetimes as ISO strings, read back with :func:`cursor_time`); a cursor
  that does not decode to the expected number of values is ``invalid_request``.
* :func:`vector_literal` — a pgvector text literal (``'[0.1,0.2]'``), 7 significant
  digits (float4 precision), for ``$n::vector``.
* :func:`tenant_of` — the tenant of a verified context. The worker runtime already
  refuses requests without one; a JetStream job or a direct call may still lack it.
* :func:`row_of` — a store's frozen row dataclass from a record, by column name.

Rows: queries return ``asyncpg.Record``; a store converts each to the service's pydantic
response model or a frozen dataclass at its boundary. jsonb columns arrive decoded
(``bus.postgres.create_database`` registers the codecs), so no store calls ``json.loads``
on a column.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from bus.errors import InvalidRequest, Unauthenticated
from schemas.context import Context

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def encode_cursor(*values: Any) -> str:
    """An opaque, URL-safe cursor of the last row's sort key."""
    return base64.urlsafe_b64encode(json.dumps(values, default=_plain).encode()).decode()


def decode_cursor(cursor: str, n: int) -> list[Any]:
    """The ``n`` values of a cursor made by :func:`encode_cursor`, or ``invalid_request``."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError):
        raise InvalidRequest("invalid cursor") from None
    if not isinstance(values, list) or len(values) != n:
        raise InvalidRequest("invalid cursor")
    return values


def cursor_time(value: Any) -> datetime:
    """A datetime stored in a cursor, or ``invalid_request``."""
    try:
        return datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidRequest("invalid cursor") from None


def vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"


def tenant_of(ctx: Context | None) -> str:
    """``ctx.tenant``, or ``unauthenticated`` when the context carries none."""
    if ctx is None or not ctx.tenant:
        raise Unauthenticated("no tenant in context")
    return ctx.tenant


T = TypeVar("T", bound="DataclassInstance")
_COLUMNS: dict[type, tuple[str, ...]] = {}


def row_of(cls: type[T], record: Any) -> T:
    """The dataclass ``cls`` from the record's columns of its fields' names (an
    ``asyncpg.Record``); a column the query did not select keeps the field's default."""
    names = _COLUMNS.get(cls)
    if names is None:
        names = _COLUMNS[cls] = tuple(cls.__dataclass_fields__)
    return cls(**{name: record[name] for name in names if name in record})


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
