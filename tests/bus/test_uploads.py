"""bus.uploads: streaming writes into the real JetStream object store bucket ``uploads``."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from bus.errors import NotFound, PayloadTooLarge
from bus.jetstream import UPLOADS_BUCKET
from bus.uploads import (
    CHUNK_SIZE,
    TENANT_HEADER,
    delete_object,
    header,
    object_info,
    put_stream,
    read_object,
)


async def pieces(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def chunk_messages(env, nuid: str) -> int:
    info = await env.js.stream_info(
        f"OBJ_{UPLOADS_BUCKET}", subjects_filter=f"$O.{UPLOADS_BUCKET}.C.{nuid}"
    )
    return sum((info.state.subjects or {}).values())


async def test_streamed_object_reads_back_with_nats_py_object_store(env):
    data = os.urandom(3 * CHUNK_SIZE + 1234)
    stored = await put_stream(
        env.js,
        "acme",
        pieces(data, 10_000),  # odd piece sizes: the helper re-chunks
        max_bytes=len(data),
        filename="report.pdf",
        content_type="application/pdf",
    )
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    store = await env.js.object_store(UPLOADS_BUCKET)
    result = await store.get(stored.name)  # verifies the SHA-256 digest itself
    assert result.data == data
    assert result.info.chunks == 4
    assert header(result.info, TENANT_HEADER) == "acme"
    assert stored.ref()["filename"] == "report.pdf"


async def test_over_the_limit_raises_payload_too_large_and_leaves_nothing(env):
    data = os.urandom(2 * CHUNK_SIZE + 10)
    with pytest.raises(PayloadTooLarge):
        await put_stream(env.js, "acme", pieces(data, 50_000), max_bytes=CHUNK_SIZE + 5)
    # Nothing of the refused upload stays: every chunk subject left belongs to a whole object.
    # The bucket is shared with the session's workers, whose own deletes may be half done
    # at one snapshot, so look again for a little while before concluding.
    store = await env.js.object_store(UPLOADS_BUCKET)
    for _ in range(50):
        info = await env.js.stream_info(
            f"OBJ_{UPLOADS_BUCKET}", subjects_filter=f"$O.{UPLOADS_BUCKET}.C.>"
        )
        chunks = {s.rsplit(".", 1)[1] for s in dict(info.state.subjects or {})}
        live = {o.nuid for o in await store.list()}
        if chunks <= live:
            break
        await asyncio.sleep(0.1)
    assert chunks <= live


async def test_another_tenant_cannot_see_read_or_delete_the_object(env):
    stored = await put_stream(env.js, "acme", [b"secret plans"], max_bytes=100)
    with pytest.raises(NotFound):
        await object_info(env.js, stored.name, "globex")
    with pytest.raises(NotFound):
        await read_object(env.js, stored.name, "globex", max_bytes=100)
    assert await delete_object(env.js, stored.name, "globex") is False
    _, data = await read_object(env.js, stored.name, "acme", max_bytes=100)
    assert data == b"secret plans"


async def test_read_refuses_objects_over_the_reader_limit(env):
    stored = await put_stream(env.js, "acme", [b"x" * 500], max_bytes=1000)
    with pytest.raises(PayloadTooLarge):
        await read_object(env.js, stored.name, "acme", max_bytes=100)


async def test_overwriting_a_name_purges_the_old_chunks(env):
    first = await put_stream(env.js, "acme", [b"a" * 1000], max_bytes=10_000, name="t/over")
    store = await env.js.object_store(UPLOADS_BUCKET)
    old = (await store.get_info(first.name)).nuid
    await put_stream(env.js, "acme", [b"b" * 10], max_bytes=10_000, name="t/over")
    assert await chunk_messages(env, old) == 0
    assert (await store.get("t/over")).data == b"b" * 10


async def test_delete_removes_the_object(env):
    stored = await put_stream(env.js, "acme", [b"bye"], max_bytes=100)
    assert await delete_object(env.js, stored.name, "acme") is True
    with pytest.raises(NotFound):
        await object_info(env.js, stored.name, "acme")
