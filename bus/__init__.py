"""The transport runtime of the mesh: codec, context, errors, worker runtime, client,
JetStream helpers, connection, settings, telemetry and state helpers."""

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
