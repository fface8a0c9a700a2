"""The error body a failed request answers with (DESIGN §4)."""

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

#: The HTTP status the bridge answers for each code.
HTTP_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "payload_too_large": 413,
    "rate_limited": 429,
    "internal": 500,
    "upstream_error": 502,
    "unavailable": 503,
    "timeout": 504,
}


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str
    details: Any = None


class ErrorReply(BaseModel):
    """The ``d`` of an error envelope: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody = Field(...)
