"""Admission: what every request the bridge forwards passes before its own work.

One :class:`Admission` object (authenticator, rate limiter, metrics, limits) serves the
route table's endpoints (:mod:`gateway_bridge.app`), the OpenAI-compatible routes
(:mod:`gateway_bridge.openai_routes`) and the upload route (:mod:`gateway_bridge.upload`);
each receives it as an argument, so tenants, quotas, deadlines, logs and metrics are the
same on every route and no route reaches into another module's internals.

The order is fixed: Content-Length (when the route has a body limit) → bearer JWT → rate
limit → deadline (``X-Request-Timeout``, capped). :meth:`Admission.admit` returns an
:class:`Admitted`, whose :meth:`~Admitted.context` is the bus context built from the
verified token only, with the caller's ids and W3C trace context. :meth:`Admission.problem`
is the one place an error becomes an HTTP answer (problem+json, with ``WWW-Authenticate``
and ``Retry-After`` where they apply); :func:`read_body` reads a body within its limit.

Imports run one way: this module imports the edge, problems, auth, metrics, the rate
limiter and settings, and nothing that imports it (``tests/mesh/test_imports.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from starlette.datastructures import URL
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope

from bus.context import now_ms, trusted
from bus.errors import (
    InvalidRequest,
    MeshError,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
)
from gateway_bridge.auth import Authenticator, Principal
from gateway_bridge.edge import RequestInfo, request_info
from gateway_bridge.metrics import BridgeMetrics
from gateway_bridge.openapi import MIN_REQUEST_TIMEOUT_S
from gateway_bridge.problems import problem_response
from gateway_bridge.ratelimit import RateLimiter
from gateway_bridge.settings import BridgeSettings
from schemas.context import Context

#: Body and query fields that claim a tenant: dropped, the tenant comes from the token.
TENANT_FIELDS = frozenset({"tenant", "tenant_id", "tenantId"})
#: The status proxies (nginx) log for a client that left before the answer.
CLIENT_CLOSED = 499


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request that passed admission: who calls, and its deadline in seconds."""

    principal: Principal
    timeout: float
    info: RequestInfo

    def context(self) -> Context:
        """The bus context: tenant, user and roles from the verified token only; the
        edge's correlation and request ids and the caller's trace context; a deadline
        ``timeout`` seconds from now (so time spent reading a large upload is not lost)."""
        info = self.info
        # Every field is already checked (token claims, the edge's id and traceparent
        # patterns): skip pydantic's re-validation on the hot path.
        return trusted(
            tenant=self.principal.tenant,
            user=self.principal.user,
            roles=self.principal.roles,
            correlation_id=info.correlation_id,
            request_id=info.request_id,
            deadline=now_ms() + int(self.timeout * 1000),
            # The caller's trace context, as the route-table routes keep it: the /v1 and
            # upload routes are part of the same trace.
            traceparent=info.traceparent,
            tracestate=info.tracestate,
        )


class Admission:
    """Authentication, rate limits, body and deadline limits for every bridged route.

    ``limiter`` is None while rate limiting is off, and until the bridge's lifespan has
    opened its Redis connection and set it.
    """

    def __init__(
        self,
        settings: BridgeSettings,
        auth: Authenticator,
        metrics: BridgeMetrics,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.auth = auth
        self.metrics = metrics
        self.limiter = limiter
        self.max_body = settings.bridge_max_body_bytes
        self.default_timeout = settings.bridge_default_timeout_seconds
        self.max_timeout = settings.bridge_max_timeout_seconds
        self.tenant_fields = TENANT_FIELDS | {settings.jwt_tenant_claim}

    async def admit(
        self,
        scope: Scope,
        headers: dict[str, str],
        *,
        max_body: int | None,
        timeout: float | None = None,
    ) -> Admitted:
        """Check the declared size (unless ``max_body`` is None), the token, the quotas
        and the asked deadline (``timeout`` is the route's default, else the bridge's).

        ``headers`` receives the rate-limit headers as soon as they are known, so an
        error raised here still carries them.
        """
        # One pass over the request headers (the first of repeated ones counts, as with
        # Starlette's Headers.get): cheaper than building a Request and its Headers.
        length = authorization = asked = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if length is None:
                    length = value.decode("latin-1")
            elif name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"x-request-timeout" and asked is None:
                asked = value.decode("latin-1")
        if max_body is not None and length is not None:
            if not length.isdigit():
                raise InvalidRequest("Content-Length is not a number")
            if int(length) > max_body:
                raise PayloadTooLarge(f"request body exceeds {max_body} bytes")
        principal = await self.auth.authenticate(authorization)
        info = request_info(scope)
        info.tenant, info.user = principal.tenant, principal.user
        if self.limiter is not None:
            decision = await self.limiter.take(principal.tenant, principal.user)
            headers.update(decision.headers())
            if not decision.allowed:
                self.metrics.rate_limited.labels(principal.tenant).inc()
                raise RateLimited(
                    "rate limit exceeded", {"retry_after": int(headers["Retry-After"])}
                )
        return Admitted(principal, self.deadline(asked, timeout), info)

    def deadline(self, asked: str | None, default: float | None = None) -> float:
        """Seconds the request may take: the client's ``X-Request-Timeout`` (capped at
        ``BRIDGE_MAX_TIMEOUT_SECONDS``), else ``default``, else the bridge's default."""
        if asked is None:
            return default or self.default_timeout
        try:
            seconds = float(asked)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < MIN_REQUEST_TIMEOUT_S:
            raise InvalidRequest(
                f"X-Request-Timeout must be a number of seconds ≥ {MIN_REQUEST_TIMEOUT_S}"
            )
        return min(seconds, self.max_timeout)

    def problem(
        self, scope: Scope, error: MeshError, headers: dict[str, str] | None = None
    ) -> Response:
        """The problem+json answer for ``error``; records its code for logs and metrics."""
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

    def client_closed(self, scope: Scope) -> Response:
        """The answer nobody reads to a client that left while sending its body; 499 is
        the status proxies log for it, so metrics and logs tell it apart."""
        request_info(scope).code = "client_closed"
        return Response(status_code=CLIENT_CLOSED)


async def read_body(receive: Receive, limit: int) -> bytes:
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
