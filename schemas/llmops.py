"""LLMOps Service contracts: ``llmops.{log,query,metrics,cost,set_budget,get_budgets}.request``.

Every LLM call is one *operation*: the gateway publishes it as an event on
``events.llmops.operation`` (stream ``LLMOPS``, :class:`schemas.gateway.LLMOpsEvent`), and
other callers hand theirs to ``llmops.log``, which puts them on the same subject in the same
shape. Budget alerts are events on ``events.llmops.alert``; budget state for the gateway's
enforcement lives in the NATS KV bucket ``LLMOPS_BUDGETS`` (docs/services/llmops.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from typing_extensions import TypedDict

from schemas.operations import Operation
from schemas.routes import Route

#: JetStream subject of one operation event (the gateway publishes the same subject).
OPERATION_SUBJECT = "events.llmops.operation"
#: JetStream subject of budget alerts (stream LLMOPS).
ALERT_SUBJECT = "events.llmops.alert"
#: NATS KV bucket holding one entry per budget, watched by the gateway.
BUDGETS_BUCKET = "LLMOPS_BUDGETS"

#: Most operations one ``llmops.log`` request may carry.
MAX_LOG_OPERATIONS = 1_000
#: Most rows one ``llmops.query`` page may hold.
MAX_QUERY_LIMIT = 1_000

Dimension = Literal["model", "provider", "user", "status", "operation"]
Metric = Literal[
    "requests",
    "errors",
    "tokens_in",
    "tokens_out",
    "cost",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "ttft_p95",
]
Bucket = Literal["minute", "hour", "day", "auto"]

_Id = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,128}$")]
_Label = Annotated[str, StringConstraints(min_length=1, max_length=256)]
_Token = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
#: Largest token count of one call (far above any context window).
_MAX_TOKENS = 1_000_000_000
#: Largest latency recorded: one day, in milliseconds.
_MAX_MS = 86_400_000.0


def _aware(value: datetime, name: str) -> None:
    # Not pydantic's AwareDatetime: the generated client (mesh/client) names plain types.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"'{name}' needs a UTC offset, e.g. 2026-01-01T00:00:00Z")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LLMOperation(BaseModel):
    """One LLM call (the *Operation* of the interface); the gateway's event fields.

    ``tokens_in`` counts every input token, cached ones included (OpenAI's convention);
    ``cached_tokens_read``/``cached_tokens_write`` say how many of them were read from or
    written to the provider's prompt cache, each priced at its own rate in ``cost`` (USD).
    """

    model_config = ConfigDict(extra="forbid")

    request_id: _Id
    ts: datetime = Field(description="when the call started (RFC 3339 with offset)")
    model: _Label = Field(description="the model alias asked for")
    provider: _Label | None = None
    operation: _Token = Field(description='e.g. "generate", "stream", "embed"')
    user: _Label | None = None
    status: Literal["ok", "error"] = "ok"
    error_code: _Token | None = None
    tokens_in: int = Field(default=0, ge=0, le=_MAX_TOKENS)
    tokens_out: int = Field(default=0, ge=0, le=_MAX_TOKENS)
    cached_tokens_read: int | None = Field(default=None, ge=0, le=_MAX_TOKENS)
    cached_tokens_write: int | None = Field(default=None, ge=0, le=_MAX_TOKENS)
    cost: float = Field(default=0.0, ge=0.0, le=1_000_000.0, allow_inf_nan=False)
    latency_ms: float = Field(default=0.0, ge=0.0, le=_MAX_MS, allow_inf_nan=False)
    ttft_ms: float | None = Field(default=None, ge=0.0, le=_MAX_MS, allow_inf_nan=False)
    correlation_id: _Id | None = None

    @model_validator(mode="after")
    def _cached_within_input(self) -> LLMOperation:
        _aware(self.ts, "ts")
        cached = (self.cached_tokens_read or 0) + (self.cached_tokens_write or 0)
        if cached > self.tokens_in:
            raise ValueError("cached_tokens_read + cached_tokens_write exceed tokens_in")
        return self


class Filters(_Request):
    """Exact matches; every given field must match."""

    model: _Label | None = None
    provider: _Label | None = None
    user: _Label | None = None
    status: Literal["ok", "error"] | None = None
    operation: _Token | None = None


class _Window(_Request):
    from_: datetime = Field(alias="from", description="start, inclusive, with a UTC offset")
    to: datetime = Field(description="end, exclusive, with a UTC offset")

    @model_validator(mode="after")
    def _ordered(self) -> _Window:
        _aware(self.from_, "from")
        _aware(self.to, "to")
        if self.from_ >= self.to:
            raise ValueError("'from' must be before 'to'")
        return self


# ---------------------------------------------------------------- log


class LogRequest(_Request):
    operations: list[LLMOperation] = Field(min_length=1, max_length=MAX_LOG_OPERATIONS)


class LogResponse(BaseModel):
    accepted: int


# ---------------------------------------------------------------- query


class QueryRequest(_Window):
    filters: Filters | None = None
    limit: int = Field(default=100, ge=1, le=MAX_QUERY_LIMIT)
    cursor: str | None = Field(default=None, max_length=512, description="next_cursor of a page")


class QueryResponse(BaseModel):
    operations: list[LLMOperation]
    next_cursor: str | None = None


# ---------------------------------------------------------------- metrics


class MetricsRequest(_Window):
    bucket: Bucket = "auto"
    group_by: list[Dimension] = Field(default_factory=list, max_length=5)
    metrics: list[Metric] = Field(min_length=1, max_length=9)
    filters: Filters | None = None

    @model_validator(mode="after")
    def _unique(self) -> MetricsRequest:
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by lists a field twice")
        return self


# A typed dict, not a model: an answer holds up to 50,000 buckets (by user per hour over
# 30 days: 36,000), and a dict is built in a quarter of the time of a model instance;
# pydantic validates and serializes both the same way (docs/services/llmops.md).
class MetricsBucket(TypedDict):
    """One time bucket of one group: the metrics asked for, by name."""

    start: datetime
    group: dict[str, str | None]
    values: dict[str, float | None]


class MetricsResponse(BaseModel):
    bucket: Literal["minute", "hour", "day"] = Field(description="the bucket used")
    source: Literal["rollup", "raw"] = Field(
        description="rollups (percentiles from histograms) or raw rows (exact percentiles)"
    )
    percentile_relative_error: float = Field(
        description="largest relative error of a percentile value (0 when exact)"
    )
    buckets: list[MetricsBucket]


# ---------------------------------------------------------------- cost


class CostRequest(_Window):
    group_by: list[Dimension] = Field(default_factory=list, max_length=5)
    filters: Filters | None = None

    @model_validator(mode="after")
    def _unique(self) -> CostRequest:
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by lists a field twice")
        return self


class CostRow(BaseModel):
    group: dict[str, str | None] = Field(default_factory=dict)
    cost: float
    tokens_in: int
    tokens_out: int
    cached_tokens_read: int = 0
    cached_tokens_write: int = 0
    requests: int


class CostResponse(BaseModel):
    currency: Literal["USD"] = "USD"
    total_cost: float
    rows: list[CostRow]


# ---------------------------------------------------------------- budgets


class SetBudgetRequest(_Request):
    scope: Literal["tenant", "user"]
    user: _Label | None = Field(default=None, description="required when scope is user")
    period: Literal["day", "month"]
    limit_usd: float = Field(gt=0, le=1_000_000_000, allow_inf_nan=False)
    hard: bool = Field(default=False, description="refuse calls once spent (else alert only)")

    @model_validator(mode="after")
    def _user_matches_scope(self) -> SetBudgetRequest:
        if self.scope == "user" and not self.user:
            raise ValueError("a user budget needs 'user'")
        if self.scope == "tenant" and self.user:
            raise ValueError("a tenant budget takes no 'user'")
        return self


class Budget(BaseModel):
    scope: Literal["tenant", "user"]
    user: str | None = None
    period: Literal["day", "month"]
    limit_usd: float
    hard: bool
    spent_usd: float = 0.0
    remaining_usd: float = 0.0
    period_start: datetime | None = None
    period_end: datetime | None = None
    exhausted: bool = False


class GetBudgetsRequest(_Request):
    pass


class GetBudgetsResponse(BaseModel):
    budgets: list[Budget]


class BudgetAlert(BaseModel):
    """Published on ``events.llmops.alert`` once per threshold per budget period."""

    tenant: str
    scope: Literal["tenant", "user"]
    user: str | None = None
    period: Literal["day", "month"]
    period_start: datetime
    threshold: int = Field(description="percent of the limit reached: 50, 80 or 100")
    limit_usd: float
    spent_usd: float
    hard: bool


class BudgetState(BaseModel):
    """One KV entry of ``LLMOPS_BUDGETS``: what the gateway needs to refuse calls."""

    tenant: str
    scope: Literal["tenant", "user"]
    user: str | None = None
    period: Literal["day", "month"]
    limit_usd: float
    spent_usd: float
    hard: bool
    exhausted: bool
    period_end_ms: int = Field(description="the block lifts here even if nobody updates it")


# ---------------------------------------------------------------- operations and routes

LOG = Operation(
    "llmops",
    "log",
    LogRequest,
    LogResponse,
    # Deduplicated by request id (Nats-Msg-Id and the store), so a retry is harmless.
    idempotent=True,
    description="record LLM calls made outside the gateway",
)
QUERY = Operation(
    "llmops",
    "query",
    QueryRequest,
    QueryResponse,
    idempotent=True,
    description="stored operations, newest first",
)
METRICS = Operation(
    "llmops",
    "metrics",
    MetricsRequest,
    MetricsResponse,
    idempotent=True,
    description="counts, tokens, cost and latency percentiles per time bucket",
)
COST = Operation(
    "llmops", "cost", CostRequest, CostResponse, idempotent=True, description="cost analysis"
)
SET_BUDGET = Operation(
    "llmops",
    "set_budget",
    SetBudgetRequest,
    Budget,
    idempotent=True,
    description="create or replace a budget",
)
GET_BUDGETS = Operation(
    "llmops",
    "get_budgets",
    GetBudgetsRequest,
    GetBudgetsResponse,
    idempotent=True,
    description="the tenant's budgets with what is spent",
)
OPERATIONS = (LOG, QUERY, METRICS, COST, SET_BUDGET, GET_BUDGETS)

_TAGS = ("llmops",)
ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/v1/llmops/log", LOG, summary="Record LLM calls", tags=_TAGS),
    Route("POST", "/api/v1/llmops/query", QUERY, summary="List stored operations", tags=_TAGS),
    Route("POST", "/api/v1/llmops/metrics", METRICS, summary="Metrics over time", tags=_TAGS),
    Route("POST", "/api/v1/llmops/cost", COST, summary="Cost analysis", tags=_TAGS),
    Route("PUT", "/api/v1/llmops/budgets", SET_BUDGET, summary="Set a budget", tags=_TAGS),
    Route("GET", "/api/v1/llmops/budgets", GET_BUDGETS, summary="List budgets", tags=_TAGS),
)
