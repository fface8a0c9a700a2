"""Server-Sent Events from a worker's streamed envelopes.

The first chunk is awaited before the response starts, so an error the worker answers
straight away (no responders, invalid request, ...) is still a plain problem+json
response with its status. After that each chunk is a ``data:`` event, the stream ends
with ``event: end``, and an error mid-stream is an ``event: error`` carrying problem
details. A client that goes away cancels the stream: the bus subscription is removed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from starlette.types import Message, Receive, Scope, Send

from bus.errors import Internal, MeshError
from gateway_bridge.encoding import dumps

_log = structlog.get_logger("gateway_bridge.sse")

MEDIA_TYPE = "text/event-stream"


def event(data: Any, *, name: str | None = None, event_id: int | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if name is not None:
        lines.append(f"event: {name}")
    lines.append("data: " + dumps(data).decode())
    return ("\n".join(lines) + "\n\n").encode()


class EventStream:
    """An ASGI response streaming ``first`` and then the rest of ``chunks`` as SSE."""

    def __init__(
        self,
        first: Any,
        chunks: AsyncIterator[Any],
        *,
        headers: dict[str, str],
        problem: Callable[[MeshError], dict[str, Any]],
        on_error: Callable[[MeshError], None],
    ) -> None:
        self._first = first
        self._chunks = chunks
        self._headers = headers
        self._problem = problem
        self._on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self._headers.items()]
        raw += [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # tell proxies (nginx) not to buffer the stream
        ]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        try:
            async with asyncio.TaskGroup() as tasks:
                pump = tasks.create_task(self._pump(send))
                watch = tasks.create_task(_until_disconnect(receive))
                # Whichever ends first ends the other: the stream finished, or the client left.
                pump.add_done_callback(lambda _: watch.cancel())
                watch.add_done_callback(lambda _: pump.cancel())
        finally:
            # Closing the generator runs the bus client's cleanup (unsubscribe) now.
            await self._chunks.aclose()  # type: ignore[attr-defined]

    async def _pump(self, send: Send) -> None:
        n = 1
        await send(_body(event(self._first, event_id=n)))
        try:
            async for chunk in self._chunks:
                n += 1
                await send(_body(event(chunk, event_id=n)))
        except MeshError as exc:
            self._on_error(exc)
            await send(_body(event(self._problem(exc), name="error"), last=True))
            return
        except Exception:
            _log.exception("stream_failed")
            error = Internal("internal error")
            self._on_error(error)
            await send(_body(event(self._problem(error), name="error"), last=True))
            return
        await send(_body(event({}, name="end"), last=True))


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


def _body(data: bytes, *, last: bool = False) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": not last}
