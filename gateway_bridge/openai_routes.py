"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/embeddings``,
``GET /v1/models``, so the official ``openai`` client (``base_url=<bridge>/v1``,
``api_key=<the JWT>``) talks to the gateway worker.

Each request goes through the bridge's admission (body limit, JWT, rate limit, deadline:
the :class:`~gateway_bridge.admission.Admission` it receives), then the pure
translations of :mod:`schemas.openai_compat` around one bus request. Errors use OpenAI's
shape (``{"error": {message, type, param, code}}``) with the status and headers the
bridge's problem+json answer would have had (``WWW-Authenticate``, ``Retry-After``,
rate-limit headers). A stream is OpenAI's SSE framing (``data:`` lines, ``data: [DONE]``
last).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute
from starlette.types import ASGIApp

from bus.context import new_id
from bus.errors import Internal, MeshError
from gateway_bridge.admission import Admission, read_body
from gateway_bridge.connections import Connections
from gateway_bridge.edge import request_info
from gateway_bridge.encoding import dumps, loads
from gateway_bridge.sse import EventStream, first_chunk
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

_log = structlog.get_logger(__name__)

PREFIX = "/v1"
JSON_MEDIA_TYPE = "application/json"
#: Headers of the problem+json answer that do not carry over to the OpenAI-shaped one.
_BODY_HEADERS = frozenset({"content-type", "content-length"})

Handler = Callable[[Request, dict[str, str]], Awaitable[ASGIApp]]


class OpenAIRoutes:
    """``/v1`` routes; ``admission`` admits each request, ``bus`` carries it."""

    def __init__(self, admission: Admission, bus: Connections) -> None:
        self.admission = admission
        self.bus = bus

    def routes(self) -> list[HttpRoute]:
        return [
            HttpRoute(f"{PREFIX}/chat/completions", self._guard(self.chat), methods=["POST"]),
            HttpRoute(f"{PREFIX}/embeddings", self._guard(self.embeddings), methods=["POST"]),
            HttpRoute(f"{PREFIX}/models", self._guard(self.models), methods=["GET"]),
        ]

    # -- handlers ------------------------------------------------------------------------

    async def chat(self, request: Request, headers: dict[str, str]) -> ASGIApp:
        admitted = await self.admission.admit(
            request.scope, headers, max_body=self.admission.max_body
        )
        call = chat_request(await self._json(request))
        ctx = admitted.context()
        completion_id, created = f"chatcmpl-{new_id()}", int(time.time())
        client = self.bus.bus_client()
        if call.stream:
            chunks = client.stream(gateway.STREAM, call.request, ctx)
            return await self._stream(request, call, chunks, completion_id, created, headers)
        resp = await client.call(gateway.GENERATE, call.request, ctx)
        return _json(chat_completion(resp, completion_id=completion_id, created=created), headers)

    async def embeddings(self, request: Request, headers: dict[str, str]) -> ASGIApp:
        admitted = await self.admission.admit(
            request.scope, headers, max_body=self.admission.max_body
        )
        call = embeddings_request(await self._json(request))
        resp = await self.bus.bus_client().call(gateway.EMBED, call.request, admitted.context())
        return _json(embeddings_response(resp, call.encoding_format), headers)

    async def models(self, request: Request, headers: dict[str, str]) -> ASGIApp:
        admitted = await self.admission.admit(
            request.scope, headers, max_body=self.admission.max_body
        )
        resp = await self.bus.bus_client().call(gateway.MODELS, {}, admitted.context())
        return _json(models_list(resp), headers)

    async def _stream(
        self,
        request: Request,
        call: ChatCall,
        chunks: AsyncGenerator[GenerateChunk, None],
        completion_id: str,
        created: int,
        headers: dict[str, str],
    ) -> ASGIApp:
        # The first chunk is awaited before answering, so an error the gateway answers at
        # once (unknown model, provider refusal) is a plain error response with its status,
        # which the openai client raises as its own exception type.
        first = await first_chunk(chunks)
        info = request_info(request.scope)

        def frame(chunk: GenerateChunk, n: int) -> bytes:
            return b"".join(
                sse(data)
                for data in chat_chunks(
                    chunk,
                    completion_id=completion_id,
                    created=created,
                    model=call.request.model or "",
                    first=n == 1,
                    include_usage=call.include_usage,
                )
            )

        def error(exc: MeshError) -> bytes:
            # OpenAI's own servers send an error object and close; the client raises it.
            info.code = exc.code
            return sse(error_body(exc.code, exc.message))

        return EventStream(first, chunks, headers=headers, frame=frame, error=error, end=SSE_DONE)

    # -- shared ----------------------------------------------------------------------------

    async def _json(self, request: Request) -> Any:
        body = await read_body(request.receive, self.admission.max_body)
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
                return self.admission.client_closed(request.scope)
            except Exception:
                _log.exception("openai_route_failed", path=request.url.path)
                return self.error(request, Internal("internal error"), headers)

        return endpoint

    def error(self, request: Request, exc: MeshError, headers: dict[str, str]) -> Response:
        # The bridge's own answer decides status and headers (and records the error code);
        # only the body takes OpenAI's shape.
        problem = self.admission.problem(request.scope, exc, headers)
        kept = {k: v for k, v in problem.headers.items() if k not in _BODY_HEADERS}
        return _json(error_body(exc.code, exc.message), kept, status=problem.status_code)


def _json(data: Any, headers: dict[str, str], *, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, headers=headers, media_type=JSON_MEDIA_TYPE)
