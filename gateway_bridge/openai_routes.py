"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/embeddings``,
``GET /v1/models``, so the official ``openai`` client (``base_url=<bridge>/v1``,
``api_key=<the JWT>``) talks to the gateway worker.

Each request goes through the bridge's own admission (body limit, JWT, rate limit,
deadline: :mod:`gateway_bridge.admission`), then the pure translations of
:mod:`schemas.openai_compat` around one bus request. Errors use OpenAI's shape
(``{"error": {message, type, param, code}}``) with the status and headers the bridge's
problem+json answer would have had (``WWW-Authenticate``, ``Retry-After``, rate-limit
headers). A stream is OpenAI's SSE framing (``data:`` lines, ``data: [DONE]`` last).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from bus.context import new_id
from bus.errors import Internal, InvalidRequest, MeshError
from gateway_bridge.admission import admit
from gateway_bridge.edge import request_info
from gateway_bridge.encoding import dumps, loads
from gateway_bridge.sse import MEDIA_TYPE as SSE_MEDIA_TYPE
from schemas import gateway
from schemas.gateway import GenerateChunk
from schemas.openai_compat import (
    SSE_DONE,
    ChatCall,
    OpenAIRequestError,
    chat_chunks,
    chat_completion,
    chat_request,
    embeddings_request,
    embeddings_response,
    error_body,
    models_list,
    sse,
)

if TYPE_CHECKING:
    from gateway_bridge.app import Bridge

_log = structlog.get_logger("gateway_bridge.openai")

PREFIX = "/v1"
JSON_MEDIA_TYPE = "application/json"
CLIENT_CLOSED = 499
#: What the codec raises for a value it cannot encode (as in app.py).
_UNENCODABLE = (ValueError, OverflowError, TypeError)
#: Headers of the problem+json answer that do not carry over to the OpenAI-shaped one.
_BODY_HEADERS = frozenset({"content-type", "content-length"})

Handler = Callable[[Request, dict[str, str]], Awaitable[ASGIApp]]


class OpenAIRoutes:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def routes(self) -> list[HttpRoute]:
        return [
            HttpRoute(f"{PREFIX}/chat/completions", self._guard(self.chat), methods=["POST"]),
            HttpRoute(f"{PREFIX}/embeddings", self._guard(self.embeddings), methods=["POST"]),
            HttpRoute(f"{PREFIX}/models", self._guard(self.models), methods=["GET"]),
        ]

    # -- handlers ------------------------------------------------------------------------

    async def chat(self, request: Request, headers: dict[str, str]) -> ASGIApp:
        admitted = await admit(
            self.bridge, request, headers, max_body=self.bridge.settings.bridge_max_body_bytes
        )
        call = chat_request(await self._json(request))
        ctx = admitted.context(request)
        completion_id, created = f"chatcmpl-{new_id()}", int(time.time())
        client = self._client()
        if call.stream:
            chunks = client.stream(gateway.STREAM, call.request, ctx)
            return await self._stream(request, call, chunks, completion_id, created, headers)
        try:
            resp = await client.call(gateway.GENERATE, call.request, ctx)
        except _UNENCODABLE:
            raise InvalidRequest("request holds values that cannot be encoded") from None
        return _json(chat_completion(resp, completion_id=completion_id, created=created), headers)

    async def embeddings(self, request: Request, headers: dict[str, str]) -> ASGIApp:
        admitted = await admit(
            self.bridge, request, headers, max_body=self.bridge.settings.bridge_max_body_bytes
        )
        call = embeddings_request(await self._json(request))
        try:
            resp = await self._client().call(gateway.EMBED, call.request, admitted.context(request))
        except _UNENCODABLE:
            raise InvalidRequest("request holds values that cannot be encoded") from None
        return _json(embeddings_response(resp, call.encoding_format), headers)

    async def models(self, request: Request, headers: dict[str, str]) -> ASGIApp:
        admitted = await admit(
            self.bridge, request, headers, max_body=self.bridge.settings.bridge_max_body_bytes
        )
        resp = await self._client().call(gateway.MODELS, {}, admitted.context(request))
        return _json(models_list(resp), headers)

    async def _stream(
        self,
        request: Request,
        call: ChatCall,
        chunks: AsyncIterator[GenerateChunk],
        completion_id: str,
        created: int,
        headers: dict[str, str],
    ) -> ASGIApp:
        # The first chunk is awaited before answering, so an error the gateway answers at
        # once (unknown model, provider refusal) is a plain error response with its status,
        # which the openai client raises as its own exception type.
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = None
        except _UNENCODABLE:
            await chunks.aclose()  # type: ignore[attr-defined]
            raise InvalidRequest("request holds values that cannot be encoded") from None
        except BaseException:
            await chunks.aclose()  # type: ignore[attr-defined]
            raise
        info = request_info(request.scope)

        def frames(chunk: GenerateChunk, first: bool) -> list[bytes]:
            return [
                sse(data)
                for data in chat_chunks(
                    chunk,
                    completion_id=completion_id,
                    created=created,
                    model=call.request.model or "",
                    first=first,
                    include_usage=call.include_usage,
                )
            ]

        def on_error(error: MeshError) -> bytes:
            info.code = error.code
            return sse(error_body(error.code, error.message))

        return OpenAIStream(first, chunks, frames, on_error, headers)

    # -- shared ----------------------------------------------------------------------------

    def _client(self) -> Any:
        assert self.bridge.client is not None  # set in the bridge's lifespan
        return self.bridge.client

    async def _json(self, request: Request) -> Any:
        from gateway_bridge.app import _body  # app imports this module: import at call time

        body = await _body(request.receive, self.bridge.settings.bridge_max_body_bytes)
        return loads(body) if body.strip() else None

    def _guard(self, handler: Handler) -> Callable[[Request], Awaitable[ASGIApp]]:
        """The route's one place errors become OpenAI-shaped responses."""

        async def endpoint(request: Request) -> ASGIApp:
            headers: dict[str, str] = {}
            try:
                return await handler(request, headers)
            except OpenAIRequestError as exc:
                request_info(request.scope).code = "invalid_request"
                body = error_body("invalid_request", exc.message, exc.param)
                return _json(body, headers, status=400)
            except MeshError as exc:
                return self.error(request, exc, headers)
            except ClientDisconnect:
                request_info(request.scope).code = "client_closed"
                return Response(status_code=CLIENT_CLOSED)
            except Exception:
                _log.exception("openai_route_failed", path=request.url.path)
                return self.error(request, Internal("internal error"), headers)

        return endpoint

    def error(self, request: Request, exc: MeshError, headers: dict[str, str]) -> Response:
        # The bridge's own answer decides status and headers (and records the error code);
        # only the body takes OpenAI's shape.
        problem = self.bridge.problem(request, exc, headers)
        kept = {k: v for k, v in problem.headers.items() if k not in _BODY_HEADERS}
        return _json(error_body(exc.code, exc.message), kept, status=problem.status_code)


class OpenAIStream:
    """An ASGI response sending ``first`` then the rest of ``chunks`` as OpenAI SSE.

    Like :class:`gateway_bridge.sse.EventStream`: a client that goes away cancels the
    pump, and the bus stream is closed (its subscription removed) either way.
    """

    def __init__(
        self,
        first: GenerateChunk | None,
        chunks: AsyncIterator[GenerateChunk],
        frames: Callable[[GenerateChunk, bool], list[bytes]],
        on_error: Callable[[MeshError], bytes],
        headers: dict[str, str],
    ) -> None:
        self._first = first
        self._chunks = chunks
        self._frames = frames
        self._on_error = on_error
        self._headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self._headers.items()]
        raw += [
            (b"content-type", SSE_MEDIA_TYPE.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        try:
            async with asyncio.TaskGroup() as tasks:
                pump = tasks.create_task(self._pump(send))
                watch = tasks.create_task(_until_disconnect(receive))
                pump.add_done_callback(lambda _: watch.cancel())
                watch.add_done_callback(lambda _: pump.cancel())
        finally:
            await self._chunks.aclose()  # type: ignore[attr-defined]

    async def _pump(self, send: Send) -> None:
        async def body(data: bytes, last: bool = False) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": not last})

        try:
            if self._first is not None:
                await body(b"".join(self._frames(self._first, True)))
                async for chunk in self._chunks:
                    await body(b"".join(self._frames(chunk, False)))
        except MeshError as exc:
            # OpenAI's own servers send an error object and close; the client raises it.
            await body(self._on_error(exc), last=True)
            return
        except Exception:
            _log.exception("openai_stream_failed")
            await body(self._on_error(Internal("internal error")), last=True)
            return
        await body(SSE_DONE, last=True)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _json(data: Any, headers: dict[str, str], *, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, headers=headers, media_type=JSON_MEDIA_TYPE)
