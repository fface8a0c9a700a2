"""The HTTP route table as data: each service lists its public routes next to its schemas.

The bridge (``gateway_bridge``) turns these entries into HTTP endpoints that forward to
NATS subjects; path, query and body parameters are merged into the request model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


@dataclass(frozen=True)
class Route:
    method: Method
    path: str
    """Public path template under ``/api/v1/...``, e.g. ``/api/v1/agents/{agent_id}``."""
    subject: str
    """The NATS request subject, e.g. ``agent.get.request``."""
    request: type[BaseModel]
    response: type[BaseModel] | None = None
    idempotent: bool = False
    """Safe to retry on ``unavailable``/``timeout`` (reads, puts, deletes)."""
    streaming: bool = False
    """Answered as Server-Sent Events from the worker's streamed envelopes."""
    status_code: int = 200
    summary: str = ""
    tags: tuple[str, ...] = ()
    timeout: float | None = None
    """Default deadline in seconds (the bridge's default when ``None``); a client may ask
    for another with ``X-Request-Timeout``, capped by the bridge's maximum."""
