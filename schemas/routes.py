"""The HTTP route table as data: each service lists its public routes next to its schemas.

A route is an HTTP method and path bound to one :class:`~schemas.operations.Operation`;
subject, models, idempotency and streaming come from the operation. The bridge
(``gateway_bridge``) turns these entries into HTTP endpoints that forward to NATS
subjects; path, query and body parameters are merged into the request model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from schemas.operations import Operation

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


@dataclass(frozen=True)
class Route:
    method: Method
    path: str
    """Public path template under ``/api/v1/...``, e.g. ``/api/v1/agents/{agent_id}``."""
    op: Operation[Any, Any]
    status_code: int = 200
    summary: str = ""
    tags: tuple[str, ...] = ()
    timeout: float | None = None
    """Default deadline in seconds (the bridge's default when ``None``); a client may ask
    for another with ``X-Request-Timeout``, capped by the bridge's maximum."""

    @property
    def subject(self) -> str:
        return self.op.subject

    @property
    def request(self) -> type[BaseModel]:
        return self.op.request

    @property
    def response(self) -> type[BaseModel]:
        return self.op.response

    @property
    def idempotent(self) -> bool:
        return self.op.idempotent

    @property
    def streaming(self) -> bool:
        """Answered as Server-Sent Events from the worker's streamed envelopes."""
        return self.op.streaming
