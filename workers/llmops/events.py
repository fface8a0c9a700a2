"""The operation event as the consumer reads it from ``events.llmops.operation``.

The gateway publishes :class:`schemas.gateway.LLMOpsEvent`; ``llmops.log`` publishes the
same fields for calls made elsewhere. This model reads both, ignores fields it does not
store (prompt, completion, attempts, ...), and bounds every value it stores, so one hostile
or broken event is refused on its own instead of failing a whole batch in Postgres.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.llmops import LLMOperation

_MAX_TOKENS = 1_000_000_000
_MAX_MS = 86_400_000.0


class OperationEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_id: str = Field(min_length=1, max_length=128)
    time_ms: int = Field(ge=0, le=32_503_680_000_000)  # before year 3000
    operation: str = Field(min_length=1, max_length=64)
    user: str | None = Field(default=None, max_length=256)
    correlation_id: str | None = Field(default=None, max_length=128)
    model: str = Field(min_length=1, max_length=256)
    provider: str | None = Field(default=None, max_length=256)
    tokens_in: int = Field(default=0, ge=0, le=_MAX_TOKENS)
    tokens_out: int = Field(default=0, ge=0, le=_MAX_TOKENS)
    cached_tokens_read: int | None = Field(default=None, ge=0, le=_MAX_TOKENS)
    cached_tokens_write: int | None = Field(default=None, ge=0, le=_MAX_TOKENS)
    cost: float = Field(default=0.0, ge=0.0, le=1_000_000.0, allow_inf_nan=False)
    latency_ms: float = Field(default=0.0, ge=0.0, le=_MAX_MS, allow_inf_nan=False)
    ttft_ms: float | None = Field(default=None, ge=0.0, le=_MAX_MS, allow_inf_nan=False)
    status: str = Field(default="ok", pattern=r"^(ok|error)$")
    error_code: str | None = Field(default=None, max_length=64)


def event_of(op: LLMOperation, tenant: str) -> dict[str, Any]:
    """An ``llmops.log`` operation in the gateway's event shape (for the stream)."""
    return {
        "event_id": op.request_id,
        "time_ms": int(op.ts.timestamp() * 1000),
        "operation": op.operation,
        "tenant": tenant,
        "user": op.user,
        "correlation_id": op.correlation_id,
        "request_id": op.request_id,
        "model": op.model,
        "provider": op.provider,
        "tokens_in": op.tokens_in,
        "tokens_out": op.tokens_out,
        "cached_tokens_read": op.cached_tokens_read,
        "cached_tokens_write": op.cached_tokens_write,
        "cost": op.cost,
        "latency_ms": op.latency_ms,
        "ttft_ms": op.ttft_ms,
        "status": op.status,
        "error_code": op.error_code,
    }


@dataclass(frozen=True, slots=True)
class Row:
    """One row of ``llmops.operations`` (column order of :data:`COLUMNS`)."""

    tenant_id: str
    ts: datetime
    request_id: str
    correlation_id: str | None
    model: str
    provider: str
    operation: str
    user_id: str
    status: str
    error_code: str | None
    tokens_in: int
    tokens_out: int
    cached_read: int | None
    cached_write: int | None
    cost: float
    latency_ms: float
    ttft_ms: float | None

    @classmethod
    def of(cls, tenant: str, e: OperationEvent) -> Row:
        return cls(
            tenant_id=tenant,
            ts=datetime.fromtimestamp(e.time_ms / 1000, UTC),
            request_id=e.event_id,
            correlation_id=e.correlation_id,
            model=e.model,
            provider=e.provider or "",
            operation=e.operation,
            user_id=e.user or "",
            status=e.status,
            error_code=e.error_code,
            tokens_in=e.tokens_in,
            tokens_out=e.tokens_out,
            cached_read=e.cached_tokens_read,
            cached_write=e.cached_tokens_write,
            cost=e.cost,
            latency_ms=e.latency_ms,
            ttft_ms=e.ttft_ms,
        )

    def record(self) -> tuple[Any, ...]:
        return (
            self.tenant_id,
            self.ts,
            self.request_id,
            self.correlation_id,
            self.model,
            self.provider,
            self.operation,
            self.user_id,
            self.status,
            self.error_code,
            self.tokens_in,
            self.tokens_out,
            self.cached_read,
            self.cached_write,
            self.cost,
            self.latency_ms,
            self.ttft_ms,
        )


COLUMNS = (
    "tenant_id",
    "ts",
    "request_id",
    "correlation_id",
    "model",
    "provider",
    "operation",
    "user_id",
    "status",
    "error_code",
    "tokens_in",
    "tokens_out",
    "cached_read",
    "cached_write",
    "cost",
    "latency_ms",
    "ttft_ms",
)
