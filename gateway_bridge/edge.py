"""The outermost layer of every HTTP request: ids, trace span, metrics, access log.

A plain ASGI middleware (no per-request wrapper objects beyond one ``send``): it picks
the correlation id (the client's ``X-Correlation-ID`` when valid, else a new one) and a
request id, returns both on every response, opens the OpenTelemetry server span the
bus client propagates into the envelope, and records metrics and one access log line
per request with tenant and correlation id.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

import structlog
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway_bridge.metrics import BridgeMetrics

_access = structlog.get_logger("gateway_bridge.access")
_tracer = trace.get_tracer("gateway_bridge")

#: The id pattern of schemas.context.Context (correlation ids end up in every envelope).
CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
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


def _new_id() -> str:
    # The same 128 random bits as uuid4().hex (bus.context.new_id), without the UUID object.
    return os.urandom(16).hex()


def request_info(scope: Scope) -> RequestInfo:
    return scope[SCOPE_KEY]  # type: ignore[no-any-return]


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, metrics: BridgeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation: str | None = None
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            if name == b"x-correlation-id":
                correlation = value.decode("latin-1")
            elif name in (b"traceparent", b"tracestate"):
                carrier[name.decode()] = value.decode("latin-1")
        if correlation is None or not CORRELATION_ID.match(correlation):
            correlation = _new_id()
        info = RequestInfo(correlation_id=correlation, request_id=_new_id())
        scope[SCOPE_KEY] = info
        ids = [
            (b"x-correlation-id", info.correlation_id.encode()),
            (b"x-request-id", info.request_id.encode()),
        ]
        status = 500  # what an exception that escapes everything becomes

        async def send_with_ids(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *ids]}
            await send(message)

        method = scope["method"]
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        # Honour a caller's W3C trace context, so a traced client sees one trace end to end.
        parent = propagate.extract(carrier) if carrier else None
        # Each request runs in its own task (its own copy of the context): binding without
        # unbinding cannot leak into another request, and costs a fraction of the context manager.
        structlog.contextvars.bind_contextvars(correlation_id=info.correlation_id)
        with _tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "mesh.correlation_id": info.correlation_id,
            },
        ) as span:
            try:
                await self.app(scope, receive, send_with_ids)
            finally:
                elapsed = time.perf_counter() - started
                self.metrics.in_flight.dec()
                route = scope.get("route")
                template = getattr(route, "path", None) or UNMATCHED
                self.metrics.observe(method, template, status, elapsed)
                span.update_name(f"{method} {template}")
                attributes: dict[str, str | int] = {
                    "http.route": template,
                    "http.response.status_code": status,
                }
                if info.tenant:
                    attributes["mesh.tenant"] = info.tenant
                span.set_attributes(attributes)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR, info.code or str(status)))
                _access.info(
                    "http_request",
                    method=method,
                    path=scope["path"],
                    route=template,
                    status=status,
                    ms=round(elapsed * 1000, 2),
                    tenant=info.tenant,
                    user=info.user,
                    correlation_id=info.correlation_id,
                    request_id=info.request_id,
                    code=info.code,
                )
