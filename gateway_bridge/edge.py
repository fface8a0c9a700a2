"""The outermost layer of every HTTP request: ids, trace span, metrics, access log, routing.

A plain ASGI middleware (no per-request wrapper objects beyond one ``send``): it picks
the correlation id (the client's ``X-Correlation-ID`` when valid, else a new one) and a
request id, returns both on every response, opens the OpenTelemetry server span the
bus client propagates into the envelope, and records metrics and one access log line
per request with tenant and correlation id.

It also routes: a request the bridge's route table fully matches goes straight to that
route's endpoint (a dict lookup, see :mod:`gateway_bridge.routing`); everything else
(operations endpoints, unknown paths, wrong methods) goes through the Starlette app
behind it, which answers exactly as it always did.

Like the worker runtime, the edge records spans only when a tracer provider is installed
(:func:`bus.telemetry.tracing_enabled`, checked once at start-up): a span nobody exports
costs more than the rest of the edge. Without one, a caller's valid W3C trace context is
still carried into the envelope unchanged, so a traced client's trace continues in
traced workers.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import structlog
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus.context import new_id
from bus.telemetry import tracing_enabled
from gateway_bridge.metrics import BridgeMetrics
from gateway_bridge.routing import RouteTable
from gateway_bridge.settings import AccessLog

_access = structlog.get_logger(__name__)
_tracer = trace.get_tracer("gateway_bridge")

#: The id pattern of schemas.context.Context (correlation ids end up in every envelope).
CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
#: A W3C traceparent (https://www.w3.org/TR/trace-context/#traceparent-header) of a
#: known version; only such a header is forwarded as is when the edge records no span.
TRACEPARENT = re.compile(
    r"^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$"
)
#: schemas.context.Context's bound on ``tracestate``.
MAX_TRACESTATE = 512
SCOPE_KEY = "mesh"
UNMATCHED = "unmatched"


@dataclass
class RequestInfo:
    """What the edge knows about one request; the route handler fills in the caller."""

    correlation_id: str
    request_id: str
    tenant: str | None = None
    user: str | None = None
    code: str | None = None
    """The mesh error code the request ended with, if any."""
    traceparent: str | None = None
    """The caller's trace context, forwarded when the edge records no span itself."""
    tracestate: str | None = None
    status: int = 500
    """The response status sent; 500 until then (what an exception escaping everything becomes)."""


def request_info(scope: Scope) -> RequestInfo:
    info: RequestInfo = scope[SCOPE_KEY]  # set by EdgeMiddleware for every http request
    return info


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: BridgeMetrics,
        routes: RouteTable,
        access_log: AccessLog = "all",
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        # Rendering and writing a log line costs more than a tenth of a bridged request:
        # busy deployments may keep only the failures (metrics and traces count the rest).
        self.log_from_status = {"all": 0, "errors": 400, "off": 1000}[access_log]
        # Decided once, like bus.worker: a provider installed later is not picked up.
        self.tracing = tracing_enabled()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation: str | None = None
        traceparent: str | None = None
        tracestate: str | None = None
        for name, value in scope["headers"]:
            if name == b"x-correlation-id":
                correlation = value.decode("latin-1")
            elif name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"tracestate":
                tracestate = value.decode("latin-1")
        if correlation is None or not CORRELATION_ID.match(correlation):
            correlation = new_id()
        info = RequestInfo(correlation_id=correlation, request_id=new_id())
        scope[SCOPE_KEY] = info
        ids = [
            (b"x-correlation-id", info.correlation_id.encode()),
            (b"x-request-id", info.request_id.encode()),
        ]

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *ids]}
            await send(message)

        # A route of the table is served directly; anything else by the Starlette app.
        app = self.app
        found = self.routes.match(scope)
        if found is not None:
            route, scope["path_params"] = found
            scope["route"] = route
            app = route.app

        method = scope["method"]
        started = time.perf_counter()
        self.metrics.in_flight_requests += 1
        # Each request runs in its own task (its own copy of the context): binding without
        # unbinding cannot leak into another request, and costs a fraction of the context manager.
        structlog.contextvars.bind_contextvars(correlation_id=info.correlation_id)
        try:
            if self.tracing:
                await _traced(app, scope, receive, send_with_ids, info, traceparent, tracestate)
            else:
                if traceparent is not None and TRACEPARENT.match(traceparent):
                    info.traceparent = traceparent
                    if tracestate is not None and len(tracestate) <= MAX_TRACESTATE:
                        info.tracestate = tracestate
                await app(scope, receive, send_with_ids)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.in_flight_requests -= 1
            template = _template(scope)
            self.metrics.observe(method, template, info.status, elapsed)
            if info.status >= self.log_from_status:
                _access.info(
                    "http_request",
                    method=method,
                    path=scope["path"],
                    route=template,
                    status=info.status,
                    ms=round(elapsed * 1000, 2),
                    tenant=info.tenant,
                    user=info.user,
                    correlation_id=info.correlation_id,
                    request_id=info.request_id,
                    code=info.code,
                )


def _template(scope: Scope) -> str:
    return getattr(scope.get("route"), "path", None) or UNMATCHED


async def _traced(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    info: RequestInfo,
    traceparent: str | None,
    tracestate: str | None,
) -> None:
    """Serve the request inside a server span, continuing a caller's W3C trace context."""
    carrier: dict[str, str] = {}
    if traceparent is not None:
        carrier["traceparent"] = traceparent
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    method = scope["method"]
    with _tracer.start_as_current_span(
        method,
        context=propagate.extract(carrier) if carrier else None,
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": method,
            "mesh.correlation_id": info.correlation_id,
        },
    ) as span:
        try:
            await app(scope, receive, send)
        finally:
            template = _template(scope)
            span.update_name(f"{method} {template}")
            attributes: dict[str, str | int] = {
                "http.route": template,
                "http.response.status_code": info.status,
            }
            if info.tenant:
                attributes["mesh.tenant"] = info.tenant
            span.set_attributes(attributes)
            if info.status >= 500:
                span.set_status(Status(StatusCode.ERROR, info.code or str(info.status)))
