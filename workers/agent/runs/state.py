"""What one drive of a run works on: its rows, its deadline, its outcome.

Shared by the loop (``loop.py``), the tool calls (``toolcalls.py``) and the NATS side
(``driver.py``); nothing here does I/O beyond the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bus.context import child
from schemas.agent import Agent, RunEvent
from schemas.context import Context
from workers.agent import tools, views
from workers.agent.rows import RunRow, StepRow
from workers.agent.store import Store

Emit = Callable[[RunEvent], Awaitable[None]]


async def no_emit(_event: RunEvent) -> None:
    return None


@dataclass
class Outcome:
    status: str
    output: str | None = None
    error: dict[str, str] | None = None


class Stop(Exception):
    """Ends a drive early with an outcome (a limit, the deadline, a model error)."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


def error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


class StoredStep(Protocol):
    """What rebuilding a conversation reads of a step: a stored row (``StepRow``) or the
    ``Step`` a client read back (``agent.get_run``) alike."""

    @property
    def type(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def result(self) -> Any: ...
    @property
    def tool_call_id(self) -> str | None: ...
    @property
    def content(self) -> str | None: ...


def conversation(
    input_messages: list[dict[str, Any]], steps: Sequence[StoredStep]
) -> list[dict[str, Any]]:
    """The messages of the next model call, rebuilt from storage."""
    messages = list(input_messages)
    for s in steps:
        if s.type == "model_call" and s.status == "ok":
            messages.append(s.result)
        elif s.type == "tool_call" and s.status != "pending_approval":
            messages.append({"role": "tool", "tool_call_id": s.tool_call_id, "content": s.content})
    return messages


def usage_of(steps: list[StepRow]) -> dict[str, int]:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for s in steps:
        for key in total:
            total[key] += int((s.usage or {}).get(key, 0))
    return total


async def toolbox(store: Store, tenant: str, agent: Agent, roles: tuple[str, ...]) -> tools.Toolbox:
    """The tools a run may call: the agent's, as the roles of whoever started it allow."""
    declared_names = [n for n in agent.tools if n not in tools.BUILTINS]
    rows = await store.list_tools(tenant, declared_names) if declared_names else []
    declared = {r.name: tools.declared_spec(r) for r in rows}
    return tools.Toolbox(
        agent.tools, declared, roles, agent.approval_required, agent.rag_collections
    )


@dataclass
class State:
    """One drive of a run: its rows, the rebuilt conversation, its deadline."""

    run: RunRow
    agent: Agent
    toolbox: tools.Toolbox
    steps: list[StepRow]
    deadline: float  # loop time
    ctx: Context
    emit: Emit
    cancelled: bool = False
    finishing: bool = False
    by_call: dict[str, StepRow] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_call = {s.tool_call_id: s for s in self.steps if s.tool_call_id}

    @property
    def tenant(self) -> str:
        return str(self.run.tenant_id)

    @property
    def run_id(self) -> str:
        return str(self.run.run_id)

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    def hop(self) -> Context:
        """The context for one call: the run's deadline, never past the caller's."""
        return child(self.ctx, timeout=max(self.remaining(), 0.001))

    def model_calls(self) -> int:
        return sum(1 for s in self.steps if s.type == "model_call")

    def last_model(self) -> StepRow | None:
        for s in reversed(self.steps):
            if s.type == "model_call":
                return s
        return None

    def check_deadline(self) -> None:
        if self.remaining() <= 0:
            raise Stop(
                Outcome(
                    "timed_out",
                    error=error(
                        "deadline",
                        f"run passed its deadline ({self.agent.limits.timeout_seconds}s)",
                    ),
                )
            )


async def record(
    store: Store, state: State, fields: dict[str, Any], update: StepRow | None = None
) -> StepRow:
    """Store a step (or complete a paused one) and tell watchers."""
    if update is None:
        row = await store.insert_step(
            state.tenant, state.run_id, {"idx": len(state.steps), **fields}
        )
        state.steps.append(row)
    else:
        changed = await store.update_step(state.tenant, state.run_id, update.idx, **fields)
        assert changed is not None
        row = changed
        state.steps[state.steps.index(update)] = row
    if row.tool_call_id:
        state.by_call[row.tool_call_id] = row
    await state.emit(RunEvent(event="step", run_id=state.run_id, step=views.step(row)))
    return row
