"""Creating and carrying :class:`schemas.Context` across hops.

Callers start a context with :func:`new_context`; a worker hands :func:`child` of the
context it received to every call it makes, so correlation id, deadline, roles and trace
context travel through the whole user action.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from opentelemetry import propagate

from bus.telemetry import tracing_enabled
from schemas.context import Context

#: Deadline given to a context created without one.
DEFAULT_TIMEOUT_S = 30.0


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return uuid.uuid4().hex


def new_context(
    tenant: str | None,
    *,
    user: str | None = None,
    roles: Iterable[str] = (),
    correlation_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Context:
    """A fresh context for a new user action, with a deadline ``timeout`` seconds away."""
    return Context(
        tenant=tenant,
        user=user,
        roles=tuple(roles),
        correlation_id=correlation_id or new_id(),
        request_id=new_id(),
        deadline=now_ms() + int(timeout * 1000),
    )


def child(ctx: Context, *, timeout: float | None = None) -> Context:
    """The context for the next hop: same action, new request id, current trace span.

    ``timeout`` may shorten the deadline, never extend it.
    """
    deadline = ctx.deadline
    if timeout is not None:
        cap = now_ms() + int(timeout * 1000)
        deadline = cap if deadline is None else min(deadline, cap)
    carrier: dict[str, str] = {}
    if tracing_enabled():
        propagate.inject(carrier)
    return ctx.model_copy(
        update={
            "request_id": new_id(),
            "deadline": deadline,
            "traceparent": carrier.get("traceparent", ctx.traceparent),
            "tracestate": carrier.get("tracestate", ctx.tracestate),
            "stream": None,
        }
    )


def remaining(ctx: Context) -> float | None:
    """Seconds left before the deadline (negative once past), or ``None`` if unbounded."""
    if ctx.deadline is None:
        return None
    return (ctx.deadline - now_ms()) / 1000.0
