"""Rows of the ``agent`` schema as frozen dataclasses: what :class:`~workers.agent.store.Store`
returns (docs/architecture.md, "State": stores convert ``asyncpg.Record``s at their
boundary). jsonb columns arrive decoded by the pool's codecs; ``views`` turns rows into
the contract models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from schemas.agent import AgentStatus, RunStatus, StepStatus, StepType

#: Column values for an insert or an update (column name → value).
Fields = dict[str, Any]


@dataclass(frozen=True)
class AgentRow:
    agent_id: str
    tenant_id: str
    name: str
    description: str | None
    llm_model: str
    llm_provider: str | None
    system_prompt: str
    status: AgentStatus
    capabilities: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    version: int
    tools: list[str]
    rag_collections: list[str]
    approval_required: list[str]
    parameters: dict[str, Any]
    limits: dict[str, Any]
    memory: dict[str, Any]
    created_by: str | None
    retrieval: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolRow:
    tool_id: str
    tenant_id: str
    name: str
    description: str
    parameters: dict[str, Any]
    implementation: Any  # jsonb, a BuiltinImplementation or LlmImplementation
    required_roles: list[str]
    requires_approval: bool
    version: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class SettingsRow:
    """A tenant's settings; version 0 (never saved) when the tenant has no row."""

    http_allowlist: list[str]
    version: int
    updated_at: datetime | None


@dataclass(frozen=True)
class ThreadRow:
    thread_id: str
    tenant_id: str
    agent_id: str
    user_id: str
    title: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class MessageRow:
    message_id: str
    tenant_id: str
    thread_id: str
    seq: int
    role: Literal["user", "assistant"]
    content: str
    run_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class RunRow:
    run_id: str
    tenant_id: str
    agent_id: str
    agent_version: int
    thread_id: str | None
    user_id: str
    roles: list[str]
    status: RunStatus
    task: str
    input_messages: list[dict[str, Any]]
    output: str | None
    error: Any  # jsonb {"code", "message"} or null
    usage: dict[str, Any]
    background: bool
    stream: bool
    cached: bool
    cache_key: str | None
    trimmed_messages: int
    cancel_requested: bool
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class StepRow:
    run_id: str
    idx: int
    tenant_id: str
    type: StepType
    status: StepStatus
    name: str | None
    tool_call_id: str | None
    arguments: Any
    result: Any
    content: str | None
    usage: dict[str, Any] | None
    finish_reason: str | None
    error: Any  # jsonb {"code", "message"} or null
    approval: Any  # jsonb {"decision", "by", "reason", "at"} or null
    started_at: datetime
    duration_ms: int | None
    citations: Any = None
    """jsonb: the passages this step retrieved (``workers.agent.citations``), or null."""


@dataclass(frozen=True)
class MemoryRow:
    memory_id: str
    agent_id: str
    text: str
    metadata: dict[str, Any]
    source: Literal["api", "run"]
    run_id: str | None
    created_at: datetime
    score: float | None = None
    """Cosine similarity to the query, in a search's results."""
