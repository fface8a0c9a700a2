"""``POST /api/v1/ingestion/upload``: multipart files streamed into the object store,
then one ``ingestion.submit.request`` (docs/services/ingestion.md, "The upload route").

The body is parsed as it arrives (``python_multipart``), never spooled: each file part's
bytes go straight into ``bus.uploads.put_stream``, which holds at most one 128 KiB chunk.
Parsing and storing run in one task (the part's data is pulled from the parser as the
object store takes it), so a slow store slows the upload instead of filling memory.

Limits: ``UPLOAD_MAX_BYTES`` per file, :data:`MAX_BATCH` files, :data:`FIELD_MAX_BYTES`
per form field. The bridge's general body limit does not apply here (a file may be far
larger than any JSON body); every other route keeps it. Whatever goes wrong after a file
was stored (a limit, a bad field, a client that leaves, the submit failing), the files
stored by this request are deleted before answering.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import structlog
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from bus.errors import Internal, InvalidRequest, MeshError, PayloadTooLarge
from bus.uploads import StoredObject, delete_object, put_stream
from gateway_bridge.admission import Admission
from gateway_bridge.connections import Connections
from gateway_bridge.edge import request_info
from gateway_bridge.encoding import dumps, loads
from schemas import ingestion
from schemas.ingestion import MAX_BATCH, UPLOAD_PATH

_log = structlog.get_logger(__name__)

FILE_FIELD = "file"
#: A form field (collection id, metadata JSON) is small; a larger one is refused.
FIELD_MAX_BYTES = 64 * 1024


class UploadRoute:
    """The upload route; ``admission`` admits each request (no body limit: ``max_bytes``
    bounds each file instead), ``bus`` stores the files and submits the job."""

    def __init__(self, admission: Admission, bus: Connections, max_bytes: int) -> None:
        self.admission = admission
        self.bus = bus
        self.max_bytes = max_bytes

    def routes(self) -> list[HttpRoute]:
        return [HttpRoute(UPLOAD_PATH, self.endpoint, methods=["POST"])]

    async def endpoint(self, request: Request) -> Response:
        headers: dict[str, str] = {}
        stored: list[StoredObject] = []
        try:
            try:
                return await self._upload(request, headers, stored)
            except BaseException:
                await self._discard(request, stored)
                raise
        except MeshError as exc:
            return self.admission.problem(request.scope, exc, headers)
        except ClientDisconnect:
            return self.admission.client_closed(request.scope)
        except Exception:
            _log.exception("upload_failed")
            return self.admission.problem(request.scope, Internal("internal error"), headers)

    async def _upload(
        self, request: Request, headers: dict[str, str], stored: list[StoredObject]
    ) -> Response:
        admitted = await self.admission.admit(request.scope, headers, max_body=None)
        tenant = admitted.principal.tenant
        js, client = self.bus.jetstream(), self.bus.bus_client()
        body = MultipartBody(request)
        collection_id: str | None = None
        metadata: dict[str, Any] = {}
        while (part := await body.next_part()) is not None:
            name, filename, content_type = part
            if filename is None:
                value = await body.field()
                if name == "collection_id":
                    collection_id = _text(value, name)
                elif name == "metadata":
                    metadata = _metadata(value)
                elif name in self.admission.tenant_fields:
                    pass  # the tenant comes from the token, as on every route
                else:
                    raise InvalidRequest(f"unknown form field {name!r}")
                continue
            if name != FILE_FIELD:
                raise InvalidRequest(f"file parts must be named {FILE_FIELD!r}, not {name!r}")
            if collection_id is None:
                raise InvalidRequest("the collection_id field must come before the files")
            if len(stored) >= MAX_BATCH:
                raise PayloadTooLarge(f"more than {MAX_BATCH} files in one upload")
            stored.append(
                await put_stream(
                    js,
                    tenant,
                    body.data(),
                    max_bytes=self.max_bytes,
                    filename=filename or None,
                    content_type=content_type,
                )
            )
        if collection_id is None:
            raise InvalidRequest("the collection_id field is required")
        if not stored:
            raise InvalidRequest(f"no {FILE_FIELD!r} part in the upload")
        payload = {
            "collection_id": collection_id,
            "documents": [{"object": s.ref(), "metadata": metadata} for s in stored],
        }
        # The deadline starts now: the upload itself may have taken longer than it.
        resp = await client.call(ingestion.SUBMIT, payload, admitted.context())
        return Response(
            dumps(resp.model_dump(mode="json")),
            status_code=202,
            headers=headers,
            media_type="application/json",
        )

    async def _discard(self, request: Request, stored: list[StoredObject]) -> None:
        tenant = request_info(request.scope).tenant
        js = self.bus.js
        if not stored or tenant is None or js is None:
            return
        for obj in stored:
            try:
                await delete_object(js, obj.name, tenant)
            except Exception:  # best effort: the original error is the answer
                _log.warning("upload_discard_failed", object=obj.name, exc_info=True)


class MultipartBody:
    """A ``multipart/form-data`` request body as parts, parsed while it arrives."""

    def __init__(self, request: Request) -> None:
        self._chunks = request.stream().__aiter__()
        self._events: deque[tuple[str, Any]] = deque()
        self._finished = False  # the closing boundary was seen
        self._exhausted = False  # the request body ended
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, bytes] = {}
        callbacks: Any = {
            "on_part_begin": self._headers.clear,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": lambda: self._events.append(("part", dict(self._headers))),
            "on_part_data": lambda d, s, e: self._events.append(("data", bytes(d[s:e]))),
            "on_part_end": lambda: self._events.append(("end", None)),
            "on_end": self._end,
        }
        self._parser = MultipartParser(_boundary(request), callbacks)

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _end(self) -> None:
        self._finished = True

    async def next_part(self) -> tuple[str, str | None, str | None] | None:
        """The next part's (name, filename or None for a field, content type); None at
        the end. Data the caller left unread in the previous part is skipped."""
        while (event := await self._next()) is not None:
            kind, value = event
            if kind != "part":
                continue
            disposition, options = parse_options_header(value.get("content-disposition", b""))
            if disposition != b"form-data" or b"name" not in options:
                raise InvalidRequest("each part needs Content-Disposition: form-data; name=...")
            filename = options.get(b"filename")
            ctype = value.get("content-type")
            return (
                options[b"name"].decode("utf-8", "replace"),
                None if filename is None else filename.decode("utf-8", "replace"),
                ctype.decode("latin-1").strip() if ctype else None,
            )
        return None

    async def data(self) -> AsyncIterator[bytes]:
        """The current part's bytes, as the parser produces them."""
        while (event := await self._next()) is not None:
            kind, value = event
            if kind == "end":
                return
            yield value
        raise InvalidRequest("the multipart body ended inside a part")

    async def field(self) -> bytes:
        value = bytearray()
        async for piece in self.data():
            value += piece
            if len(value) > FIELD_MAX_BYTES:
                raise PayloadTooLarge(f"a form field exceeds {FIELD_MAX_BYTES} bytes")
        return bytes(value)

    async def _next(self) -> tuple[str, Any] | None:
        while not self._events:
            if self._exhausted:
                if not self._finished:
                    raise InvalidRequest("the multipart body is truncated")
                return None
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._exhausted = True
                continue
            if self._finished:
                continue  # an epilogue after the closing boundary is ignored
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise InvalidRequest(f"malformed multipart body: {exc}") from None
        return self._events.popleft()


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest("the body must be multipart/form-data with a boundary")
    return boundary


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"the {name} field is not UTF-8") from None


def _metadata(value: bytes) -> dict[str, Any]:
    parsed = loads(value) if value.strip() else {}
    if not isinstance(parsed, dict):
        raise InvalidRequest("the metadata field must be a JSON object")
    return parsed
