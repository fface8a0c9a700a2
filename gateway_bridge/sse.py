"""Server-Sent Events from a worker's streamed envelopes: one response class for every
streaming route.

The first chunk is awaited before the response starts (by the route, see
:func:`first_chunk`), so an error the worker answers straight away (no responders,
invalid request, ...) is still a plain error response with its status. After that
:class:`EventStream` sends each chunk as the route frames it, then the route's ``end``
frame; an error mid-stream becomes the route's error frame, which ends the stream. A
client that goes away cancels the stream, and the bus stream is closed (its subscription
removed) either way.

The route table's streams frame chunks as ``id:``/``data:`` events, end with
``event: end`` and report errors as ``event: error`` with problem details
(:mod:`gateway_bridge.app`); the OpenAI-compatible routes use OpenAI's framing
(``data:`` lines, ``data: [DONE]``; :mod:`gateway_bridge.openai_routes`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any

import structlog
from starlette.types import Message, Receive, Scope, Send

from bus.errors import Internal, MeshError
from gateway_bridge.encoding import dumps

_log = structlog.get_logger(__name__)

MEDIA_TYPE = "text/event-stream"
_HEADERS = [
    (b"content-type", MEDIA_TYPE.encode()),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell proxies (nginx) not to buffer the stream
]

#: Frames one chunk; the second argument is its 1-based position in the stream.
Framer = Callable[[Any, int], bytes]


def event(data: Any, *, name: str | None = None, event_id: int | None = None) -> bytes:
    """One SSE event: optional ``id:`` and ``event:`` lines, then ``data:`` as JSON."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if name is not None:
        lines.append(f"event: {name}")
    lines.append("data: " + dumps(data).decode())
    return ("\n".join(lines) + "\n\n").encode()


async def first_chunk(chunks: AsyncGenerator[Any, None]) -> Any | None:
    """The stream's first chunk (None if it ended at once). Any error closes the stream
    and propagates, so the route answers it as a plain error response."""
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None
    except BaseException:
        await chunks.aclose()
        raise


class EventStream:
    """An ASGI response sending ``first`` (unless None) and the rest of ``chunks``.

    ``frame(chunk, n)`` renders each chunk; ``error(exc)`` renders the last frame of a
    stream that failed (and may record the error); ``end`` is the last frame of one
    that finished.
    """

    def __init__(
        self,
        first: Any | None,
        chunks: AsyncGenerator[Any, None],
        *,
        headers: dict[str, str],
        frame: Framer,
        error: Callable[[MeshError], bytes],
        end: bytes,
    ) -> None:
        self._first = first
        self._chunks = chunks
        self._headers = headers
        self._frame = frame
        self._error = error
        self._end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self._headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw + _HEADERS})
        try:
            async with asyncio.TaskGroup() as tasks:
                pump = tasks.create_task(self._pump(send))
                watch = tasks.create_task(_until_disconnect(receive))
                # Whichever ends first ends the other: the stream finished, or the client left.
                pump.add_done_callback(lambda _: watch.cancel())
                watch.add_done_callback(lambda _: pump.cancel())
        finally:
            # Closing the generator runs the bus client's cleanup (unsubscribe) now.
            await self._chunks.aclose()

    async def _pump(self, send: Send) -> None:
        try:
            if self._first is not None:
                n = 1
                await send(_body(self._frame(self._first, n)))
                async for chunk in self._chunks:
                    n += 1
                    await send(_body(self._frame(chunk, n)))
        except MeshError as exc:
            await send(_body(self._error(exc), last=True))
            return
        except Exception:
            _log.exception("stream_failed")
            await send(_body(self._error(Internal("internal error")), last=True))
            return
        await send(_body(self._end, last=True))


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


def _body(data: bytes, *, last: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": not last}
