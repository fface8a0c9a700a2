"""What every route the bridge serves by hand (OpenAI-compatible routes, uploads) does
before its own work, in the order the route table's handler does it (app.py
``Bridge._forward``): Content-Length → bearer JWT → rate limit → deadline. The same
:class:`~gateway_bridge.auth.Authenticator`, limiter, metrics and request info are used,
so tenants, quotas, logs and metrics are shared with the table's routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from bus.context import now_ms
from bus.errors import InvalidRequest, PayloadTooLarge, RateLimited
from gateway_bridge.auth import Principal
from gateway_bridge.edge import request_info
from schemas.context import Context

if TYPE_CHECKING:
    from gateway_bridge.app import Bridge


@dataclass(frozen=True)
class _Budget:
    """The part of a route plan ``Bridge._timeout`` reads: the route's default deadline."""

    timeout: float


@dataclass
class Admitted:
    """A request that passed admission: who calls, the rate-limit headers, its deadline."""

    principal: Principal
    headers: dict[str, str]
    timeout: float

    def context(self, request: Request) -> Context:
        """The bus context, from the verified token only; the deadline starts now."""
        info = request_info(request.scope)
        return Context.model_construct(
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


async def admit(
    bridge: Bridge, request: Request, headers: dict[str, str], *, max_body: int | None
) -> Admitted:
    """Check the declared size (unless ``max_body`` is None), the token and the quotas.

    ``headers`` receives the rate-limit headers as soon as they are known, so an error
    raised here still carries them.
    """
    length = request.headers.get("content-length")
    if max_body is not None and length is not None:
        if not length.isdigit():
            raise InvalidRequest("Content-Length is not a number")
        if int(length) > max_body:
            raise PayloadTooLarge(f"request body exceeds {max_body} bytes")
    principal = await bridge.auth.authenticate(request.headers.get("authorization"))
    info = request_info(request.scope)
    info.tenant, info.user = principal.tenant, principal.user
    if bridge.limiter is not None:
        decision = await bridge.limiter.take(principal.tenant, principal.user)
        headers.update(decision.headers())
        if not decision.allowed:
            bridge.metrics.rate_limited.labels(principal.tenant).inc()
            raise RateLimited("rate limit exceeded", {"retry_after": int(headers["Retry-After"])})
    budget = _Budget(bridge.settings.bridge_default_timeout_seconds)
    timeout = bridge._timeout(request.headers.get("x-request-timeout"), budget)  # type: ignore[arg-type]
    return Admitted(principal, headers, timeout)
