"""The bridge: an ASGI app that maps the route table onto NATS subjects.

For each request on a route: body size (Content-Length) → bearer JWT → rate limit →
body (counted while streamed) → path + query + body merged and validated against the
route's request model → a context built from the verified token only → one bus request
(or stream) → JSON (or Server-Sent Events). Every failure on the way is one
``MeshError`` answered as problem+json, in :meth:`Bridge.handle`.

Each path of the table is one plain ASGI endpoint (:class:`_Endpoint`) that the edge
calls directly once it has looked the route up; it reads the scope and sends its answer
without Starlette's Request/Response objects (a bridged request's hot path). Starlette
still serves the operations endpoints and answers 404/405.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import httpx
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import URL, QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from bus.client import Client
from bus.codec import Codec
from bus.connection import connect
from bus.context import now_ms, trusted
from bus.errors import (
    Forbidden,
    Internal,
    InvalidRequest,
    MeshError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from bus.settings import Settings
from bus.worker import validation_details
from gateway_bridge.auth import Authenticator
from gateway_bridge.dashboard import Dashboard
from gateway_bridge.edge import EdgeMiddleware, RequestInfo, request_info
from gateway_bridge.encoding import dumps, loads
from gateway_bridge.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway_bridge.metrics import BridgeMetrics
from gateway_bridge.openai_routes import OpenAIRoutes
from gateway_bridge.openapi import MIN_REQUEST_TIMEOUT_S, build_openapi
from gateway_bridge.problems import problem_body, problem_response
from gateway_bridge.ratelimit import TAKE_SCRIPT, RateLimiter
from gateway_bridge.redis_script import RedisScript
from gateway_bridge.routes import ROUTES
from gateway_bridge.routing import RouteTable
from gateway_bridge.sse import MEDIA_TYPE as SSE_MEDIA_TYPE
from gateway_bridge.sse import EventStream, event
from gateway_bridge.upload import UploadRoute
from schemas.context import Context
from schemas.routes import Route

_log = structlog.get_logger("gateway_bridge")

#: Redis answers a rate-limit script in well under a millisecond; past this it is "down".
RATE_LIMIT_REDIS_TIMEOUT_S = 0.25
READY_TIMEOUT_S = 2.0
JSON_MEDIA_TYPE = "application/json"
_JSON_CONTENT_TYPE = JSON_MEDIA_TYPE.encode()
CLIENT_CLOSED = 499
#: What the codec raises for a value it cannot encode (Codec.encode does not translate).
_UNENCODABLE = (ValueError, OverflowError, TypeError)
#: Body and query fields that claim a tenant: dropped, the tenant comes from the token.
TENANT_FIELDS = frozenset({"tenant", "tenant_id", "tenantId"})


@dataclass(frozen=True)
class _Plan:
    """What the handler of one route needs, computed once."""

    route: Route
    list_fields: frozenset[str]
    """Fields whose query parameter may repeat (``?tag=a&tag=b``)."""
    timeout: float


class Bridge:
    """One bridge app's state: settings, routes, bus/Redis connections, auth, limiter."""

    def __init__(self, settings: Settings, routes: Iterable[Route]) -> None:
        self.settings = settings
        self.routes = tuple(routes)
        self.metrics = BridgeMetrics()
        self.http = httpx.AsyncClient() if settings.jwt_jwks_url else None
        self.auth = Authenticator(settings, self.http)
        self.openapi = build_openapi(self.routes)
        self._openapi_json = dumps(self.openapi)
        self._docs_html = (resources.files("gateway_bridge") / "docs.html").read_bytes()
        self._tenant_fields = TENANT_FIELDS | {settings.jwt_tenant_claim}
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.client: Client | None = None
        self.redis: RedisScript | None = None
        self.limiter: RateLimiter | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        if not settings.nats_url:
            raise RuntimeError("NATS_URL is not set (mesh up starts an embedded one)")
        self.nc = await connect(
            settings.nats_url,
            name=f"bridge:{settings.service_name}",
            user=settings.nats_user,
            password=settings.nats_password,
        )
        self.js = self.nc.jetstream()
        self.client = Client(self.nc, codec=Codec(settings.codec_type))
        if settings.redis_url:
            self.redis = RedisScript(
                settings.redis_url, TAKE_SCRIPT, timeout=RATE_LIMIT_REDIS_TIMEOUT_S
            )
        if settings.rate_limit_enabled:
            if self.redis is None:
                _log.warning("ratelimit_local_only", reason="REDIS_URL is not set")
            self.limiter = RateLimiter.from_settings(
                settings, self.redis, on_fallback=self.metrics.ratelimit_fallback.inc
            )
        _log.info("bridge_started", routes=len(self.routes))
        try:
            yield
        finally:
            if self.http is not None:
                await self.http.aclose()
            if self.redis is not None:
                await self.redis.close()
            if not self.nc.is_closed:
                await self.nc.drain()
            _log.info("bridge_stopped")

    # -- routes ------------------------------------------------------------------------

    def route_endpoints(self) -> list[HttpRoute]:
        """One Starlette route per path of the route table (its methods share an endpoint)."""
        by_path: dict[str, dict[str, _Plan]] = {}
        for route in self.routes:
            methods = by_path.setdefault(route.path, {})
            if route.method in methods:
                raise ValueError(f"two routes for {route.method} {route.path}")
            methods[route.method] = self._plan(route)
        return [
            HttpRoute(path, _Endpoint(self, plans), methods=list(plans))
            for path, plans in by_path.items()
        ]

    def operation_routes(self) -> list[HttpRoute]:
        return [
            HttpRoute("/healthz", self.healthz, methods=["GET"]),
            HttpRoute("/readyz", self.readyz, methods=["GET"]),
            HttpRoute("/metrics", self.metrics_endpoint, methods=["GET"]),
            HttpRoute("/openapi.json", self.openapi_endpoint, methods=["GET"]),
            HttpRoute("/docs", self.docs, methods=["GET"]),
        ]

    def _plan(self, route: Route) -> _Plan:
        schema = route.request.model_json_schema()
        list_fields = frozenset(
            name
            for name, prop in schema.get("properties", {}).items()
            if prop.get("type") == "array"
            or any(alt.get("type") == "array" for alt in prop.get("anyOf", ()))
        )
        timeout = route.timeout or self.settings.bridge_default_timeout_seconds
        return _Plan(route=route, list_fields=list_fields, timeout=timeout)

    # -- the one place errors become responses ------------------------------------------

    async def handle(self, scope: Scope, receive: Receive, plan: _Plan) -> ASGIApp:
        info = request_info(scope)
        headers: dict[str, str] = {}  # rate-limit headers, on success and failure alike
        try:
            return await self._forward(scope, receive, plan, info, headers)
        except MeshError as exc:
            return self.problem(scope, exc, headers)
        except ClientDisconnect:
            # The client left while sending its body: nobody reads an answer. 499 is the
            # status proxies (nginx) log for this, so metrics and logs tell it apart.
            info.code = "client_closed"
            return Response(status_code=CLIENT_CLOSED)
        except Exception:
            _log.exception("bridge_failed", route=plan.route.path)
            return self.problem(scope, Internal("internal error"), headers)

    def problem(
        self, scope: Scope, error: MeshError, headers: dict[str, str] | None = None
    ) -> Response:
        info = request_info(scope)
        info.code = error.code
        extra = dict(headers or {})
        if isinstance(error, Unauthenticated):
            # RFC 6750 §3: tell the client which scheme, and that its token was the problem.
            has_token = any(name == b"authorization" for name, _ in scope["headers"])
            extra["WWW-Authenticate"] = 'Bearer realm="mesh"' + (
                ', error="invalid_token"' if has_token else ""
            )
        elif isinstance(error, RateLimited) and "Retry-After" not in extra:
            # A worker's own quota (e.g. an LLM provider's) still tells the client when.
            extra["Retry-After"] = str(max(1, math.ceil(error.retry_after or 1)))
        return problem_response(
            error,
            instance=URL(scope=scope).path,
            correlation_id=info.correlation_id,
            request_id=info.request_id,
            headers=extra,
        )

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        plan: _Plan,
        info: RequestInfo,
        headers: dict[str, str],
    ) -> ASGIApp:
        route = plan.route
        limit = self.settings.bridge_max_body_bytes
        # One pass over the request headers (the first of repeated ones counts, as with
        # Starlette's Headers.get): cheaper than building a Request and its Headers.
        length = authorization = asked_timeout = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if length is None:
                    length = value.decode("latin-1")
            elif name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"x-request-timeout" and asked_timeout is None:
                asked_timeout = value.decode("latin-1")
        if length is not None:
            if not length.isdigit():
                raise InvalidRequest("Content-Length is not a number")
            if int(length) > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        principal = await self.auth.authenticate(authorization)
        info.tenant, info.user = principal.tenant, principal.user
        if self.limiter is not None:
            decision = await self.limiter.take(principal.tenant, principal.user)
            headers.update(decision.headers())
            if not decision.allowed:
                self.metrics.rate_limited.labels(principal.tenant).inc()
                raise RateLimited(
                    "rate limit exceeded", {"retry_after": int(headers["Retry-After"])}
                )
        timeout = self._timeout(asked_timeout, plan)
        payload = self._payload(scope, plan, await _body(receive, limit))
        try:
            model = route.request.model_validate(payload)
        except ValidationError as exc:
            raise InvalidRequest("invalid request", validation_details(exc)) from None
        # Every field is already checked (token claims, the id pattern): skip re-validation.
        ctx = trusted(
            tenant=principal.tenant,
            user=principal.user,
            roles=principal.roles,
            correlation_id=info.correlation_id,
            request_id=info.request_id,
            deadline=now_ms() + int(timeout * 1000),
            traceparent=info.traceparent,
            tracestate=info.tracestate,
        )
        assert self.client is not None
        if route.streaming:
            return await self._stream(scope, route, model, ctx, headers)
        try:
            data = await self.client.call_raw(route.op, model, ctx)
        except _UNENCODABLE:
            # msgpack refuses lone surrogates and integers beyond 64 bits that pydantic's
            # `Any` lets through: the client's input, not a bug.
            raise InvalidRequest("request holds values that cannot be encoded") from None
        return _JsonResponse(dumps(data), route.status_code, headers)

    async def _stream(
        self, scope: Scope, route: Route, model: Any, ctx: Context, headers: dict[str, str]
    ) -> ASGIApp:
        assert self.client is not None
        chunks = self.client.stream_raw(route.op, model, ctx)
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            return Response(event({}, name="end"), headers=headers, media_type=SSE_MEDIA_TYPE)
        except _UNENCODABLE:
            await chunks.aclose()
            raise InvalidRequest("request holds values that cannot be encoded") from None
        except BaseException:
            await chunks.aclose()
            raise
        info = request_info(scope)

        def on_error(error: MeshError) -> None:
            info.code = error.code

        def problem(error: MeshError) -> dict[str, Any]:
            return problem_body(
                error,
                instance=URL(scope=scope).path,
                correlation_id=info.correlation_id,
                request_id=info.request_id,
            )

        return EventStream(first, chunks, headers=headers, problem=problem, on_error=on_error)

    def _timeout(self, raw: str | None, plan: _Plan) -> float:
        if raw is None:
            return plan.timeout
        try:
            asked = float(raw)
        except ValueError:
            asked = math.nan
        if not math.isfinite(asked) or asked < MIN_REQUEST_TIMEOUT_S:
            raise InvalidRequest(
                f"X-Request-Timeout must be a number of seconds ≥ {MIN_REQUEST_TIMEOUT_S}"
            )
        return min(asked, self.settings.bridge_max_timeout_seconds)

    def _payload(self, scope: Scope, plan: _Plan, body: bytes) -> dict[str, Any]:
        """Query, then body, then path parameters: later ones win; tenant claims dropped."""
        payload: dict[str, Any] = {}
        if scope["query_string"]:
            query = QueryParams(scope["query_string"])
            for key in query:
                values = query.getlist(key)
                payload[key] = values if key in plan.list_fields else values[-1]
        if body.strip():
            parsed = loads(body)
            if not isinstance(parsed, dict):
                raise InvalidRequest("the body must be a JSON object")
            if payload:
                payload.update(parsed)
            else:
                payload = parsed
        path_params = scope.get("path_params")
        if path_params:
            payload.update(path_params)
        for name in self._tenant_fields:
            payload.pop(name, None)
        return payload

    # -- operations --------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON_MEDIA_TYPE)

    async def readyz(self, request: Request) -> Response:
        checks: dict[str, str] = {}
        ready = self.nc is not None and self.nc.is_connected
        checks["nats"] = "connected" if ready else "disconnected"
        if ready and self.js is not None:
            try:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    await self.js.account_info()
                checks["jetstream"] = "ok"
            except Exception as exc:  # any failure means "not ready", never a 500
                checks["jetstream"] = f"unreachable: {type(exc).__name__}"
                ready = False
        if self.redis is not None:
            # Informational: rate limits fail open while Redis is down (docs/bridge.md).
            try:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    await self.redis.ping()
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"] = f"down ({type(exc).__name__}): rate limits are per process"
        if not ready:
            return self.problem(request.scope, Unavailable("not ready", checks))
        return Response(dumps({"status": "ready", **checks}), media_type=JSON_MEDIA_TYPE)

    async def metrics_endpoint(self, request: Request) -> Response:
        # Metrics carry tenant names: with BRIDGE_METRICS_TOKEN set they need it as a
        # bearer token; without one they are served to loopback clients only.
        token = self.settings.bridge_metrics_token
        if token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return self.problem(
                    request.scope, Unauthenticated("metrics need the operator's bearer token")
                )
        elif not _loopback(request):
            return self.problem(
                request.scope,
                Forbidden("metrics are served to loopback clients only; set BRIDGE_METRICS_TOKEN"),
            )
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def openapi_endpoint(self, request: Request) -> Response:
        return Response(self._openapi_json, media_type=JSON_MEDIA_TYPE)

    async def docs(self, request: Request) -> Response:
        return Response(self._docs_html, media_type="text/html; charset=utf-8")

    # -- Starlette's own errors (no route, wrong method) and escaped exceptions ---------

    async def on_http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error: MeshError
        if exc.status_code == 404:
            error = NotFound(f"no route for {request.url.path}")
        elif exc.status_code == 405:
            error = InvalidRequest(f"method {request.method} not allowed here")
        else:
            error = InvalidRequest(str(exc.detail))
        info = request_info(request.scope)
        info.code = error.code
        return problem_response(
            error,
            status=exc.status_code,
            instance=request.url.path,
            correlation_id=info.correlation_id,
            request_id=info.request_id,
            headers=exc.headers,
        )

    async def on_exception(self, request: Request, exc: Exception) -> Response:
        # Sent by Starlette's outermost middleware, past the edge's `send`: add the ids here.
        info = request.scope.get("mesh")
        ids = (
            {"X-Correlation-ID": info.correlation_id, "X-Request-ID": info.request_id}
            if isinstance(info, RequestInfo)
            else {}
        )
        return problem_response(
            Internal("internal error"),
            instance=request.url.path,
            correlation_id=ids.get("X-Correlation-ID"),
            request_id=ids.get("X-Request-ID"),
            headers=ids,
        )


def create_app(settings: Settings, routes: Iterable[Route] = ROUTES) -> Starlette:
    """The bridge app for ``settings``; it connects to NATS and Redis in its lifespan."""
    bridge = Bridge(settings, routes)
    endpoints = [
        *bridge.route_endpoints(),
        *OpenAIRoutes(bridge).routes(),  # /v1/...: gateway_bridge/openai_routes.py
        *UploadRoute(bridge).routes(),  # multipart: gateway_bridge/upload.py
    ]
    app = Starlette(
        routes=[*endpoints, *bridge.operation_routes(), *Dashboard().routes()],
        middleware=[
            Middleware(
                EdgeMiddleware,
                metrics=bridge.metrics,
                routes=RouteTable(endpoints),
                access_log=settings.bridge_access_log,
            )
        ],
        exception_handlers={
            HTTPException: bridge.on_http_exception,
            Exception: bridge.on_exception,
        },
        lifespan=bridge.lifespan,
    )
    app.router.redirect_slashes = False  # a POST redirected to another path helps nobody
    app.state.bridge = bridge
    return app


class _Endpoint:
    """The ASGI app of one path of the route table: runs the plan of the request's method.

    The edge calls it directly for a request the route table matches; Starlette's router
    reaches it only when the edge is not in front (its 405s stay Starlette's).
    """

    def __init__(self, bridge: Bridge, plans: dict[str, _Plan]) -> None:
        self._bridge = bridge
        self._plans = plans
        self._get = plans.get("GET")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        plan = self._plans.get(method) or (self._get if method == "HEAD" else None)
        assert plan is not None  # Starlette answers 405 for other methods
        response = await self._bridge.handle(scope, receive, plan)
        await response(scope, receive, send)


class _JsonResponse:
    """A JSON answer: what ``starlette.responses.Response`` sends, built directly."""

    __slots__ = ("_body", "_status", "_headers")

    def __init__(self, body: bytes, status: int, headers: dict[str, str]) -> None:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if status >= 200 and status not in (204, 304):
            raw.append((b"content-length", str(len(body)).encode()))
        raw.append((b"content-type", _JSON_CONTENT_TYPE))
        self._body = body
        self._status = status
        self._headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self._status, "headers": self._headers}
        )
        await send({"type": "http.response.body", "body": self._body})


async def _body(receive: Receive, limit: int) -> bytes:
    """The request body, counted as it arrives (Content-Length may be absent or lie)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")
