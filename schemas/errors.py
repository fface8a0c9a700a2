"""The error body a failed request answers with (docs/architecture.md, "Errors").

``ErrorCode`` names the wire codes for the pydantic contract; their classes, HTTP
statuses and titles are listed once, in :mod:`bus.errors` (``tests/bus/test_errors.py``
checks both lists name the same codes).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

ErrorCode = Literal[
    "invalid_request",
    "unauthenticated",
    "forbidden",
    "not_found",
    "conflict",
    "payload_too_large",
    "rate_limited",
    "internal",
    "upstream_error",
    "unavailable",
    "timeout",
]


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str
    details: Any = None


class ErrorReply(BaseModel):
    """The ``d`` of an error envelope: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody = Field(...)
