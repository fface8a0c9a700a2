"""Creating and carrying :class:`schemas.Context` across hops.

Callers start a context with :func:`new_context`; a worker hands :func:`child` of the
context it received to every call it makes, so correlation id, deadline, roles and trace
context travel through the whole user action.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Iterable
from typing import Any

from opentelemetry import propagate, trace

from bus.telemetry import tracing_enabled
from schemas.context import Context

#: Deadline given to a context created without one.
DEFAULT_TIMEOUT_S = 30.0


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str = "") -> str:
    """128 random bits as 32 hex digits (the shape of ``uuid4().hex``); with a ``prefix``,
    the id of a stored resource: ``new_id("doc")`` is ``doc-3f2a…`` (the hyphen is valid
    in every service's id pattern). The one id maker of the mesh.

    Request and correlation ids (no prefix) correlate and identify; they guard nothing,
    so a PRNG seeded from the OS serves: ``uuid4()`` makes a system call
    (``os.urandom``) and builds a UUID object for each, on every hop of every request.
    The generator is this module's own, so code that seeds the global ``random`` (tests,
    hypothesis) cannot make ids repeat. A resource id outlives the request and is handed
    to API users, who also see request ids (``X-Request-ID``), from which a PRNG's state
    can be recovered: its bits come from the OS (``secrets``), once per created resource.
    """
    if prefix:
        return f"{prefix}-{secrets.token_hex(16)}"
    return "%032x" % _random_bits(128)  # noqa: UP031 - the fastest of the formatting ways


_ids = random.Random()  # seeded from os.urandom
if hasattr(os, "register_at_fork"):  # POSIX: a forked child must not repeat its parent's ids
    os.register_at_fork(after_in_child=_ids.seed)
_random_bits = _ids.getrandbits
_set = object.__setattr__
#: Every field of Context, with its default (all immutable: None or ()).
_DEFAULTS: dict[str, Any] = {name: f.get_default() for name, f in Context.model_fields.items()}


def trusted(**values: Any) -> Context:
    """``Context.model_construct(**values)`` for values already validated, at a third of
    the cost: the bridge builds one per HTTP request, from a verified token.

    Context is frozen, ignores extras and has no private attributes, so an instance is its
    field dict plus the set of fields given; ``model_construct`` works that out field by
    field in Python. ``tests/bus/test_context.py`` checks both agree.
    """
    ctx = Context.__new__(Context)
    _set(ctx, "__dict__", {**_DEFAULTS, **values})
    _set(ctx, "__pydantic_fields_set__", set(values))
    _set(ctx, "__pydantic_extra__", None)
    _set(ctx, "__pydantic_private__", None)
    return ctx


def _replace(ctx: Context, changes: dict[str, Any]) -> Context:
    """``ctx.model_copy(update=changes)`` without pydantic's generic copy (see trusted())."""
    if type(ctx) is not Context:  # a subclass may carry extras or private attributes
        return ctx.model_copy(update=changes)
    out = Context.__new__(Context)
    _set(out, "__dict__", {**ctx.__dict__, **changes})
    _set(out, "__pydantic_fields_set__", ctx.__pydantic_fields_set__ | changes.keys())
    _set(out, "__pydantic_extra__", None)
    _set(out, "__pydantic_private__", None)
    return out


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
    # Without a current span the W3C propagator injects nothing: skip asking whether
    # tracing is on (a few µs per hop while no provider is installed: OpenTelemetry then
    # looks its provider variable up in os.environ on every call).
    if trace.get_current_span().get_span_context().is_valid and tracing_enabled():
        propagate.inject(carrier)
    return _replace(
        ctx,
        {
            "request_id": new_id(),
            "deadline": deadline,
            "traceparent": carrier.get("traceparent", ctx.traceparent),
            "tracestate": carrier.get("tracestate", ctx.tracestate),
            "stream": None,
        },
    )


def remaining(ctx: Context) -> float | None:
    """Seconds left before the deadline (negative once past), or ``None`` if unbounded."""
    if ctx.deadline is None:
        return None
    return (ctx.deadline - now_ms()) / 1000.0
