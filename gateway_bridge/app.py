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
from bus.errors import (
    Forbidden,
    Internal,
    InvalidRequest,
    MeshError,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from bus.worker import validation_details
from gateway_bridge.admission import Admission, read_body
from gateway_bridge.auth import Authenticator
from gateway_bridge.connections import Connections
from gateway_bridge.dashboard import Dashboard
from gateway_bridge.edge import EdgeMiddleware, RequestInfo, request_info
from gateway_bridge.encoding import dumps, loads
from gateway_bridge.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway_bridge.metrics import BridgeMetrics
from gateway_bridge.openai_routes import OpenAIRoutes
from gateway_bridge.openapi import build_openapi
from gateway_bridge.problems import problem_body, problem_response
from gateway_bridge.ratelimit import TAKE_SCRIPT, RateLimiter
from gateway_bridge.redis_script import RedisScript
from gateway_bridge.routes import ROUTES
from gateway_bridge.routing import RouteTable
from gateway_bridge.settings import BridgeSettings
from gateway_bridge.sse import EventStream, event, first_chunk
from gateway_bridge.upload import UploadRoute
from schemas.context import Context
from schemas.routes import Route

_log = structlog.get_logger(__name__)

#: Redis answers a rate-limit script in well under a millisecond; past this it is "down".
RATE_LIMIT_REDIS_TIMEOUT_S = 0.25
READY_TIMEOUT_S = 2.0
JSON_MEDIA_TYPE = "application/json"
_JSON_CONTENT_TYPE = JSON_MEDIA_TYPE.encode()
_END = event({}, name="end")


@dataclass(frozen=True)
class _Plan:
    """What the handler of one route needs, computed once."""

    route: Route
    list_fields: frozenset[str]
    """Fields whose query parameter may repeat (``?tag=a&tag=b``)."""
    timeout: float


class Bridge:
    """One bridge app's state: settings, routes, connections, admission (auth, limiter)."""

    def __init__(self, settings: BridgeSettings, routes: Iterable[Route]) -> None:
        self.settings = settings
        self.routes = tuple(routes)
        self.metrics = BridgeMetrics()
        self.http = httpx.AsyncClient() if settings.jwt_jwks_url else None
        self.auth = Authenticator(settings, self.http)
        self.admission = Admission(settings, self.auth, self.metrics)
        self.bus = Connections()
        self.openapi = build_openapi(self.routes)
        self._openapi_json = dumps(self.openapi)
        self._docs_html = (resources.files("gateway_bridge") / "docs.html").read_bytes()
        self.redis: RedisScript | None = None

    @property
    def nc(self) -> NATS | None:
        return self.bus.nc

    @property
    def js(self) -> JetStreamContext | None:
        return self.bus.js

    @property
    def client(self) -> Client | None:
        return self.bus.client

    # -- lifecycle ---------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        if not settings.nats_url:
            raise RuntimeError("NATS_URL is not set (mesh up starts an embedded one)")
        nc = await connect(
            settings.nats_url,
            name=f"bridge:{settings.service_name}",
            user=settings.nats_user,
            password=settings.nats_password,
        )
        self.bus.nc, self.bus.js = nc, nc.jetstream()
        self.bus.client = Client(nc, codec=Codec(settings.codec_type))
        if settings.redis_url:
            self.redis = RedisScript(
                settings.redis_url, TAKE_SCRIPT, timeout=RATE_LIMIT_REDIS_TIMEOUT_S
            )
        if settings.rate_limit_enabled:
            if self.redis is None:
                _log.warning("ratelimit_local_only", reason="REDIS_URL is not set")
            self.admission.limiter = RateLimiter.from_settings(
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
            if not nc.is_closed:
                await nc.drain()
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
        headers: dict[str, str] = {}  # rate-limit headers, on success and failure alike
        try:
            return await self._forward(scope, receive, plan, headers)
        except MeshError as exc:
            return self.admission.problem(scope, exc, headers)
        except ClientDisconnect:
            return self.admission.client_closed(scope)
        except Exception:
            _log.exception("bridge_failed", route=plan.route.path)
            return self.admission.problem(scope, Internal("internal error"), headers)

    def problem(
        self, scope: Scope, error: MeshError, headers: dict[str, str] | None = None
    ) -> Response:
        return self.admission.problem(scope, error, headers)

    async def _forward(
        self, scope: Scope, receive: Receive, plan: _Plan, headers: dict[str, str]
    ) -> ASGIApp:
        route = plan.route
        admission = self.admission
        admitted = await admission.admit(
            scope, headers, max_body=admission.max_body, timeout=plan.timeout
        )
        payload = self._payload(scope, plan, await read_body(receive, admission.max_body))
        try:
            model = route.request.model_validate(payload)
        except ValidationError as exc:
            raise InvalidRequest("invalid request", validation_details(exc)) from None
        ctx = admitted.context()
        client = self.bus.bus_client()
        if route.streaming:
            return await self._stream(scope, client, route, model, ctx, headers)
        # A value pydantic's `Any` lets through but msgpack refuses (a lone surrogate, an
        # integer beyond 64 bits) is the client's input: Codec.encode raises InvalidRequest.
        data = await client.call_raw(route.op, model, ctx)
        return _JsonResponse(dumps(data), route.status_code, headers)

    async def _stream(
        self,
        scope: Scope,
        client: Client,
        route: Route,
        model: Any,
        ctx: Context,
        headers: dict[str, str],
    ) -> ASGIApp:
        chunks = client.stream_raw(route.op, model, ctx)
        first = await first_chunk(chunks)
        info = request_info(scope)

        def error(exc: MeshError) -> bytes:
            info.code = exc.code
            problem = problem_body(
                exc,
                instance=URL(scope=scope).path,
                correlation_id=info.correlation_id,
                request_id=info.request_id,
            )
            return event(problem, name="error")

        return EventStream(first, chunks, headers=headers, frame=_event, error=error, end=_END)

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
        for name in self.admission.tenant_fields:
            payload.pop(name, None)
        return payload

    # -- operations --------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON_MEDIA_TYPE)

    async def readyz(self, request: Request) -> Response:
        checks: dict[str, str] = {}
        nc, js = self.bus.nc, self.bus.js
        ready = nc is not None and nc.is_connected
        checks["nats"] = "connected" if ready else "disconnected"
        if ready and js is not None:
            try:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    await js.account_info()
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


def create_app(settings: BridgeSettings, routes: Iterable[Route] = ROUTES) -> Starlette:
    """The bridge app for ``settings``; it connects to NATS and Redis in its lifespan."""
    bridge = Bridge(settings, routes)
    endpoints = [
        *bridge.route_endpoints(),
        # /v1/...: gateway_bridge/openai_routes.py; multipart: gateway_bridge/upload.py
        *OpenAIRoutes(bridge.admission, bridge.bus).routes(),
        *UploadRoute(bridge.admission, bridge.bus, settings.upload_max_bytes).routes(),
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


def _event(chunk: Any, n: int) -> bytes:
    return event(chunk, event_id=n)


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")
