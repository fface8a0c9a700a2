"""pgvector's binary wire format for RAG's pool: vectors go to Postgres as bytes.

pgvector's ``vector_send``/``vector_recv`` format is ``uint16 dim, uint16 unused`` then
``dim`` big-endian float4 (pgvector ``src/vector.c``). Writing chunks this way skips
formatting 384 floats as text per chunk in Python and parsing them back in Postgres —
the write path's largest CPU cost after index maintenance (docs/services/rag.md,
"How indexing scales").

:func:`register` is the pool's ``init`` hook. Parameters typed ``vector`` then take
``bytes`` already in this format (:func:`to_wire`, one numpy call per batch), a
sequence of floats, or a pgvector text literal (``'[1,2,3]'``, what
``bus.sql.vector_literal`` makes), so callers written for the text format keep working;
``vector`` columns read back as ``list[float]``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import asyncpg
import numpy as np

_HEADER = struct.Struct(">HH")
_WIRE = np.dtype(">f4")
#: pgvector's own limit on dimensions (``VECTOR_MAX_DIM``).
MAX_DIM = 16000


def to_wire(vectors: Sequence[Sequence[float]] | np.ndarray) -> list[bytes]:
    """Each vector in the binary format (all vectors of one call have one dimension)."""
    if len(vectors) == 0:
        return []
    array = np.asarray(vectors, dtype=_WIRE)
    if array.ndim != 2 or not 0 < array.shape[1] <= MAX_DIM:
        raise ValueError(f"vectors must be a list of equal-length vectors, got {array.shape}")
    header = _HEADER.pack(array.shape[1], 0)
    return [header + row.tobytes() for row in array]


def _encode(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):  # a text literal: '[0.1,0.2]'
        body = value.strip()
        if not (body.startswith("[") and body.endswith("]")):
            raise ValueError("a vector literal looks like '[0.1,0.2]'")
        inner = body[1:-1].strip()
        value = [float(x) for x in inner.split(",")] if inner else []
    array = np.asarray(value, dtype=_WIRE)
    if array.ndim != 1 or not 0 < array.shape[0] <= MAX_DIM:
        raise ValueError(f"a vector has 1 to {MAX_DIM} dimensions")
    return _HEADER.pack(array.shape[0], 0) + array.tobytes()


def _decode(data: bytes) -> list[float]:
    dim, _ = _HEADER.unpack_from(data)
    return np.frombuffer(data, dtype=_WIRE, count=dim, offset=_HEADER.size).tolist()


async def register(conn: asyncpg.Connection) -> None:
    """Binary ``vector`` codec on a connection (a pool's ``init`` hook)."""
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
        " WHERE t.typname = 'vector'"
    )
    if schema is None:  # the extension comes with the first migration
        return
    await conn.set_type_codec(
        "vector", schema=schema, encoder=_encode, decoder=_decode, format="binary"
    )
