"""Error responses as ``application/problem+json`` (RFC 9457), one shape for every error.

A problem carries the standard members (``type``, ``title``, ``status``, ``detail``,
``instance``) and the mesh's own: ``code``, ``correlation_id``, ``request_id`` and, for
schema violations, ``details`` (the field errors). Code, status and title are the error
class's own (:mod:`bus.errors`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from bus.errors import MeshError
from schemas.errors import ErrorCode

PROBLEM_MEDIA_TYPE = "application/problem+json"
#: ``type`` is a URN per code: stable, and not pretending to be a page anyone can open.
TYPE_PREFIX = "urn:motadata:mesh:error:"


class Problem(BaseModel):
    """An error answer (RFC 9457 problem details with the mesh's members); documents the
    shape in the OpenAPI spec."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description=f"{TYPE_PREFIX}<code>")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    code: ErrorCode = Field(description="the mesh error code (docs/architecture.md, Errors)")
    instance: str | None = Field(default=None, description="the request path")
    correlation_id: str | None = None
    request_id: str | None = None
    details: Any = Field(default=None, description="e.g. the field errors of a 400")


def problem_body(
    error: MeshError,
    *,
    status: int | None = None,
    instance: str | None = None,
    correlation_id: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + error.code,
        "title": error.title,
        "status": status or error.status,
        "detail": error.message,
        "code": error.code,
    }
    if instance:
        body["instance"] = instance
    if correlation_id:
        body["correlation_id"] = correlation_id
    if request_id:
        body["request_id"] = request_id
    if error.details is not None:
        body["details"] = error.details
    return body


def problem_response(
    error: MeshError,
    *,
    status: int | None = None,
    instance: str | None = None,
    correlation_id: str | None = None,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = problem_body(
        error,
        status=status,
        instance=instance,
        correlation_id=correlation_id,
        request_id=request_id,
    )
    return Response(
        json.dumps(body, separators=(",", ":"), default=str).encode(),
        status_code=body["status"],
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )
