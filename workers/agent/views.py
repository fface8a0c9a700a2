"""Stored rows → contract models."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from schemas.agent import (
    Agent,
    AgentSettings,
    MemoryItem,
    PendingApproval,
    RunResult,
    RunSummary,
    Step,
    Thread,
    ThreadMessage,
    Tool,
)
from workers.agent import citations
from workers.agent.rows import (
    AgentRow,
    MemoryRow,
    MessageRow,
    RunRow,
    SettingsRow,
    StepRow,
    ThreadRow,
    ToolRow,
)


def agent(row: AgentRow) -> Agent:
    return Agent.model_validate({k: getattr(row, k) for k in Agent.model_fields if hasattr(row, k)})


def step(row: StepRow) -> Step:
    return Step(
        index=row.idx,
        type=row.type,
        status=row.status,
        name=row.name,
        tool_call_id=row.tool_call_id,
        arguments=row.arguments,
        result=row.result,
        content=row.content,
        usage=row.usage,
        finish_reason=row.finish_reason,
        error=row.error,
        approval=row.approval,
        started_at=row.started_at,
        duration_ms=row.duration_ms,
    )


def pending(steps: Iterable[StepRow]) -> list[PendingApproval]:
    return [
        PendingApproval(tool_call_id=s.tool_call_id, name=s.name, arguments=s.arguments)
        for s in steps
        if s.status == "pending_approval"
        and s.approval is None
        and s.tool_call_id is not None  # a paused step is always a named tool call
        and s.name is not None
    ]


def run(row: RunRow, steps: Sequence[StepRow]) -> RunResult:
    return RunResult(
        run_id=row.run_id,
        agent_id=row.agent_id,
        thread_id=row.thread_id,
        status=row.status,
        output=row.output,
        steps=[step(s) for s in steps],
        usage=row.usage or {},
        error=row.error,
        pending_approvals=pending(steps) if row.status == "requires_approval" else [],
        citations=citations.of_run(steps, row.output),
        cached=row.cached,
        background=row.background,
        user=row.user_id,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def run_summary(row: RunRow) -> RunSummary:
    return RunSummary(
        run_id=row.run_id,
        agent_id=row.agent_id,
        thread_id=row.thread_id,
        status=row.status,
        task=row.task,
        output=row.output,
        usage=row.usage or {},
        cached=row.cached,
        user=row.user_id,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def thread(row: ThreadRow, messages: Sequence[MessageRow] | None = None) -> Thread:
    return Thread(
        thread_id=row.thread_id,
        agent_id=row.agent_id,
        user=row.user_id,
        title=row.title,
        created_at=row.created_at,
        updated_at=row.updated_at,
        messages=None
        if messages is None
        else [
            ThreadMessage(
                message_id=m.message_id,
                role=m.role,
                content=m.content,
                run_id=m.run_id,
                created_at=m.created_at,
            )
            for m in messages
        ],
    )


def memory(row: MemoryRow) -> MemoryItem:
    return MemoryItem(
        memory_id=row.memory_id,
        agent_id=row.agent_id,
        text=row.text,
        metadata=row.metadata or {},
        source=row.source,
        run_id=row.run_id,
        score=row.score,
        created_at=row.created_at,
    )


def tool(row: ToolRow) -> Tool:
    return Tool(
        name=row.name,
        description=row.description,
        parameters=row.parameters,
        builtin=False,
        implementation=row.implementation,
        required_roles=list(row.required_roles),
        requires_approval=row.requires_approval,
        tool_id=row.tool_id,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def settings(row: SettingsRow) -> AgentSettings:
    return AgentSettings(
        http_allowlist=row.http_allowlist, version=row.version, updated_at=row.updated_at
    )
