"""Files in the JetStream object store bucket ``uploads``, written as a stream.

nats-py's ``ObjectStore.put`` takes bytes or a blocking file object; an HTTP upload
arrives as an async stream of pieces. :func:`put_stream` writes those pieces in the
object store's own layout (128 KiB chunk messages on ``$O.<bucket>.C.<nuid>``, then a
rolled-up meta message on ``$O.<bucket>.M.<base64 name>`` with the SHA-256 digest), so
at most one chunk is held in memory and ``ObjectStore.get`` and the ``nats`` CLI read
the result as usual. Past ``max_bytes`` it removes what it wrote and raises
:class:`~bus.errors.PayloadTooLarge`.

Every object records the tenant that wrote it (header ``Mesh-Tenant``); readers check it,
so an object name is useless to another tenant.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from bus.errors import NotFound, PayloadTooLarge, Unavailable
from bus.jetstream import UPLOADS_BUCKET

#: Size of one chunk message (nats-py's and the Go client's default).
CHUNK_SIZE = 128 * 1024
TENANT_HEADER = "Mesh-Tenant"
FILENAME_HEADER = "Mesh-Filename"
CONTENT_TYPE_HEADER = "Content-Type"
PUBLISH_TIMEOUT_S = 10.0

# https://github.com/nats-io/nats.py nats/js/object_store.py (same subjects and rollup)
_CHUNKS = "$O.{bucket}.C.{nuid}"
_META = "$O.{bucket}.M.{name}"
_STREAM = "OBJ_{bucket}"
_ROLLUP = {api.Header.ROLLUP.value: "sub"}


@dataclass(frozen=True)
class StoredObject:
    """What :func:`put_stream` wrote: pass :meth:`ref` to ``ingestion.submit.request``."""

    name: str
    size: int
    sha256: str
    filename: str | None = None
    content_type: str | None = None

    def ref(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def new_object_name(prefix: str = "up") -> str:
    return f"{prefix}/{uuid.uuid4().hex}"


async def put_stream(
    js: JetStreamContext,
    tenant: str,
    pieces: AsyncIterable[bytes] | Iterable[bytes],
    *,
    max_bytes: int,
    filename: str | None = None,
    content_type: str | None = None,
    name: str | None = None,
    bucket: str = UPLOADS_BUCKET,
) -> StoredObject:
    """Write ``pieces`` as one object owned by ``tenant``; raise ``PayloadTooLarge`` past
    ``max_bytes`` (nothing is left behind), ``Unavailable`` if JetStream does not answer."""
    previous = await _previous_nuid(js, bucket, name) if name else None
    name = name or new_object_name()
    nuid = uuid.uuid4().hex
    chunk_subject = _CHUNKS.format(bucket=bucket, nuid=nuid)
    digest = hashlib.sha256()
    pending = bytearray()
    size = 0
    chunks = 0
    try:
        async for piece in _aiter(pieces):
            size += len(piece)
            if size > max_bytes:
                raise PayloadTooLarge(f"file exceeds the {max_bytes}-byte upload limit")
            digest.update(piece)
            pending += piece
            while len(pending) >= CHUNK_SIZE:
                await _publish(js, chunk_subject, bytes(pending[:CHUNK_SIZE]))
                del pending[:CHUNK_SIZE]
                chunks += 1
        if pending:
            await _publish(js, chunk_subject, bytes(pending))
            chunks += 1
        headers = {TENANT_HEADER: [tenant]}
        if filename:
            headers[FILENAME_HEADER] = [filename]
        if content_type:
            headers[CONTENT_TYPE_HEADER] = [content_type]
        info = api.ObjectInfo(
            name=name,
            bucket=bucket,
            nuid=nuid,
            size=size,
            chunks=chunks,
            mtime=datetime.now(UTC).isoformat(),
            digest="SHA-256=" + base64.urlsafe_b64encode(digest.digest()).decode(),
            headers=headers,
            options=api.ObjectMetaOptions(max_chunk_size=CHUNK_SIZE),
        )
        await _publish(
            js, _meta_subject(bucket, name), json.dumps(info.as_dict()).encode(), _ROLLUP
        )
    except BaseException:
        with contextlib.suppress(Exception):
            await js.purge_stream(_STREAM.format(bucket=bucket), subject=chunk_subject)
        raise
    if previous:  # the name was overwritten: its old chunks are unreachable now
        with contextlib.suppress(Exception):
            await js.purge_stream(
                _STREAM.format(bucket=bucket), subject=_CHUNKS.format(bucket=bucket, nuid=previous)
            )
    return StoredObject(name, size, digest.hexdigest(), filename, content_type)


async def object_info(
    js: JetStreamContext, name: str, tenant: str, *, bucket: str = UPLOADS_BUCKET
) -> api.ObjectInfo:
    """The object's info if it exists and belongs to ``tenant``, else ``NotFound``."""
    store = await _store(js, bucket)
    try:
        info = await store.get_info(name)
    except (nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError):
        raise NotFound(f"no uploaded object {name!r}") from None
    if header(info, TENANT_HEADER) != tenant:
        raise NotFound(f"no uploaded object {name!r}")  # never say it exists elsewhere
    return info


async def read_object(
    js: JetStreamContext,
    name: str,
    tenant: str,
    *,
    max_bytes: int,
    bucket: str = UPLOADS_BUCKET,
) -> tuple[api.ObjectInfo, bytes]:
    """The whole object, after checking owner and size (``PayloadTooLarge`` above it)."""
    info = await object_info(js, name, tenant, bucket=bucket)
    if (info.size or 0) > max_bytes:
        raise PayloadTooLarge(f"file of {info.size} bytes exceeds the {max_bytes}-byte limit")
    store = await _store(js, bucket)
    try:
        result = await store.get(name)
    except (nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError):
        raise NotFound(f"no uploaded object {name!r}") from None
    except nats.errors.TimeoutError:
        raise Unavailable("object store did not answer") from None
    return info, result.data or b""


async def delete_object(
    js: JetStreamContext, name: str, tenant: str, *, bucket: str = UPLOADS_BUCKET
) -> bool:
    """Delete the tenant's object; ``False`` if there was none."""
    try:
        await object_info(js, name, tenant, bucket=bucket)
    except NotFound:
        return False
    store = await _store(js, bucket)
    with contextlib.suppress(nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError):
        await store.delete(name)
    return True


def header(info: api.ObjectInfo, key: str) -> str | None:
    """One header of an object (Go clients store each as a list of values)."""
    value = (info.headers or {}).get(key)
    if isinstance(value, list):
        return str(value[0]) if value else None
    return None if value is None else str(value)


async def _previous_nuid(js: JetStreamContext, bucket: str, name: str) -> str | None:
    store = await _store(js, bucket)
    try:
        info = await store.get_info(name)
    except (nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError):
        return None
    return info.nuid or None


def _meta_subject(bucket: str, name: str) -> str:
    return _META.format(bucket=bucket, name=base64.urlsafe_b64encode(name.encode()).decode())


async def _store(js: JetStreamContext, bucket: str) -> Any:
    try:
        return await js.object_store(bucket)
    except nats.errors.TimeoutError:
        raise Unavailable("object store did not answer") from None


async def _publish(
    js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str] | None = None
) -> None:
    try:
        await js.publish(subject, data, timeout=PUBLISH_TIMEOUT_S, headers=headers)
    except nats.js.errors.APIError as exc:
        # The bucket is at its size limit (discard "new"): JetStream answers 503 "maximum
        # bytes exceeded" (err_code 10077), not a transient outage.
        if exc.err_code == 10077 or "maximum bytes" in (exc.description or "").lower():
            raise PayloadTooLarge(
                "the upload store is full; try again after files are processed or deleted"
            ) from None
        if isinstance(exc, nats.js.errors.ServiceUnavailableError):
            raise Unavailable(f"object store write failed: {type(exc).__name__}") from None
        raise
    except (
        nats.errors.TimeoutError,
        nats.errors.NoRespondersError,
        nats.errors.ConnectionClosedError,
        # No stream leader for a moment (a node was lost); 503 is handled above.
        nats.js.errors.NoStreamResponseError,
    ) as exc:
        raise Unavailable(f"object store write failed: {type(exc).__name__}") from None


async def _aiter(pieces: AsyncIterable[bytes] | Iterable[bytes]) -> Any:
    if isinstance(pieces, AsyncIterable):
        async for piece in pieces:
            if piece:
                yield bytes(piece)
    else:
        for piece in pieces:
            if piece:
                yield bytes(piece)
