"""The transport runtime of the mesh: codec, context, errors, worker runtime, client,
JetStream helpers, connection, settings, telemetry and state helpers.

The names below are imported on first use (PEP 562): a process that needs only
``bus.errors`` (a bus.offload worker process, for one) does not pay for NATS, asyncio
clients and OpenTelemetry at start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bus.breaker import BreakerConfig, CircuitBreaker
    from bus.client import Client, RetryPolicy
    from bus.codec import Codec, Limits
    from bus.connection import connect
    from bus.context import child, new_context, remaining
    from bus.errors import (
        Conflict,
        Forbidden,
        Internal,
        InvalidRequest,
        MeshError,
        NotFound,
        PayloadTooLarge,
        RateLimited,
        RetryableError,
        Timeout,
        Unauthenticated,
        Unavailable,
        UpstreamError,
    )
    from bus.settings import Settings
    from bus.worker import Endpoint, Worker

__all__ = [
    "BreakerConfig",
    "CircuitBreaker",
    "Client",
    "Codec",
    "Conflict",
    "Endpoint",
    "Forbidden",
    "Internal",
    "InvalidRequest",
    "Limits",
    "MeshError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "RetryableError",
    "Settings",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "UpstreamError",
    "Worker",
    "child",
    "connect",
    "new_context",
    "remaining",
]


_WHERE = {
    "BreakerConfig": "bus.breaker",
    "CircuitBreaker": "bus.breaker",
    "Client": "bus.client",
    "RetryPolicy": "bus.client",
    "Codec": "bus.codec",
    "Limits": "bus.codec",
    "connect": "bus.connection",
    "child": "bus.context",
    "new_context": "bus.context",
    "remaining": "bus.context",
    "Settings": "bus.settings",
    "Endpoint": "bus.worker",
    "Worker": "bus.worker",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name) or ("bus.errors" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module 'bus' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
