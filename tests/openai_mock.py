"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for gateway tests.

Behaviour is chosen by the request's ``model``: ``mock.script("m1", Reply(status=429),
Reply(content="ok"))`` makes the first call for ``m1`` answer 429 and every later one
"ok" (the last reply sticks). Every request is recorded. Runs under uvicorn in a thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mesh.infra import free_port


@dataclass
class Reply:
    status: int = 200
    content: str | None = "Hello from the mock."
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str = "stop"
    usage: tuple[int, int] = (9, 5)
    cached: int = 0
    """Prompt tokens reported as read from the prompt cache (``prompt_tokens_details``)."""
    delay: float = 0.0
    raw: bytes | None = None
    """Send these bytes as the body instead (malformed answers)."""
    pieces: list[str] | None = None
    """Stream these content pieces (default: the content split on spaces)."""
    every: float = 0.0
    """Seconds between streamed pieces (a slow stream)."""
    stream_error_after: int | None = None
    """Drop the connection after this many streamed pieces."""
    headers: dict[str, str] = field(default_factory=dict)
    message: str | None = None
    """The error message of a non-200 reply."""
    segments: list[tuple[float, float, str]] | None = None
    """Transcriptions: the timed segments of a ``verbose_json`` answer (default: one
    segment holding the whole content)."""


def _usage(reply: Reply) -> dict[str, Any]:
    p, c = reply.usage
    usage: dict[str, Any] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    if reply.cached:
        usage["prompt_tokens_details"] = {"cached_tokens": reply.cached}
    return usage


@dataclass
class Seen:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


class MockOpenAI:
    def __init__(self) -> None:
        self.port = free_port()
        self.scripts: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, model: str, *replies: Reply) -> None:
        self.scripts[model] = list(replies) or [Reply()]

    def calls(self, model: str) -> list[Seen]:
        return [s for s in self.seen if s.body.get("model") == model]

    def _next(self, model: str) -> Reply:
        replies = self.scripts.get(model) or [Reply()]
        return replies.pop(0) if len(replies) > 1 else replies[0]

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.seen.append(Seen(request.url.path, body, dict(request.headers)))
        reply = self._next(str(body.get("model")))
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.raw is not None:
            return Response(reply.raw, status_code=reply.status, media_type="application/json")
        if reply.status != 200:
            text = reply.message or f"mock error {reply.status}"
            error = {"error": {"message": text, "type": "mock"}}
            return JSONResponse(error, status_code=reply.status, headers=reply.headers)
        if body.get("stream"):
            return StreamingResponse(self._stream(body, reply), media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        return JSONResponse(
            {
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
                "usage": _usage(reply),
            }
        )

    async def _stream(self, body: dict[str, Any], reply: Reply) -> Any:
        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            data = {
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        pieces = reply.pieces
        if pieces is None:
            words = (reply.content or "").split(" ")
            pieces = [w if i == 0 else " " + w for i, w in enumerate(words)] if words else []
        yield chunk({"role": "assistant", "content": ""})
        for i, piece in enumerate(pieces):
            if reply.stream_error_after is not None and i >= reply.stream_error_after:
                raise ConnectionResetError("mock drops the stream")
            if reply.every:
                await asyncio.sleep(reply.every)
            yield chunk({"content": piece})
        for i, call in enumerate(reply.tool_calls or []):
            yield chunk({"tool_calls": [{"index": i, **call}]})
        yield chunk({}, reply.finish_reason)
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = _usage(reply)
            data = {
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [],
                "usage": usage,
            }
            yield b"data: " + json.dumps(data).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def embeddings(self, request: Request) -> Response:
        body = await request.json()
        self.seen.append(Seen(request.url.path, body, dict(request.headers)))
        reply = self._next(str(body.get("model")))
        if reply.status != 200:
            error = {"error": {"message": f"mock error {reply.status}", "type": "mock"}}
            return JSONResponse(error, status_code=reply.status)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = int(body.get("dimensions") or 8)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [float(len(t) % 7 + j) for j in range(dims)],
            }
            for i, t in enumerate(inputs)
        ]
        n = sum(len(str(t).split()) for t in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": n, "total_tokens": n},
            }
        )

    async def transcriptions(self, request: Request) -> Response:
        """``/v1/audio/transcriptions`` (multipart): the form fields are recorded, with the
        file as ``{"filename", "size"}``; the reply's content is the transcript."""
        async with request.form() as form:
            body: dict[str, Any] = {}
            for key, value in form.multi_items():
                if hasattr(value, "read"):
                    data = await value.read()
                    body[key] = {"filename": value.filename, "size": len(data)}
                elif key.endswith("[]"):
                    body.setdefault(key, []).append(value)
                else:
                    body[key] = value
        self.seen.append(Seen(request.url.path, body, dict(request.headers)))
        reply = self._next(str(body.get("model")))
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status != 200:
            text = reply.message or f"mock error {reply.status}"
            return JSONResponse({"error": {"message": text, "type": "mock"}}, reply.status)
        text = reply.content or ""
        segments = reply.segments if reply.segments is not None else [(0.0, 1.0, text)]
        if body.get("response_format") != "verbose_json":
            return JSONResponse({"text": text})
        return JSONResponse(
            {
                "task": "transcribe",
                "language": "english",
                "duration": max((e for _, e, _ in segments), default=0.0),
                "text": text,
                "segments": [
                    {"id": i, "start": a, "end": b, "text": t}
                    for i, (a, b, t) in enumerate(segments)
                ],
            }
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
            ]
        )

    def start(self) -> None:
        config = uvicorn.Config(
            self.app(),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,  # scripted slow replies must not hold up teardown
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"mock OpenAI server could not start on port {self.port}")
            if time.monotonic() > deadline:
                raise RuntimeError("mock OpenAI server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
