"""The tool calls of a model message: pause for approval, refuse, or carry them out.

A call identical to one already answered in this run (same tool, same canonical JSON
arguments) is not carried out again: it is stored as a ``repeated`` step that points at the
earlier one, and the next model call is made with ``tool_choice: "none"`` (``loop.py``),
so the model answers from the results it has (docs/services/agent.md "Repeated calls").

Each call's outcome is stored as a step whose content is the tool message the model sees
next (wrapped as untrusted data, ``tools.wrap_result``/``wrap_error``).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from bus.errors import MeshError
from workers.agent import citations, tools
from workers.agent.executor import Call, Executor
from workers.agent.rows import StepRow
from workers.agent.runs.state import Outcome, State, Stop, error, record
from workers.agent.settings import AgentConfig
from workers.agent.store import Store

_log = structlog.get_logger(__name__)


class ToolCalls:
    def __init__(self, store: Store, executor: Executor, config: AgentConfig) -> None:
        self.store = store
        self.executor = executor
        self.config = config

    async def answer(self, state: State, calls: list[dict[str, Any]]) -> bool:
        """Answer each call of the last model message that has no result yet.

        Returns True when a call needs approval (the run pauses before it).
        """
        limit = self.config.tool_result_chars
        for call in calls:
            call_id = call["id"]
            name = call["function"]["name"]
            raw = call["function"].get("arguments") or "{}"
            existing = state.by_call.get(call_id)
            if existing is not None and existing.status != "pending_approval":
                continue  # answered already (before a pause)
            if existing is None:
                earlier = answered_before(state, name, raw, call_id)
                if earlier is not None:
                    await self._repeated(state, call_id, name, raw, earlier)
                    continue
            decision = await state.toolbox.check(name, raw, key=state.tenant)
            if existing is not None:
                approval = existing.approval
                if approval is None:
                    return True
                if approval["decision"] == "rejected":
                    why = f": {approval['reason']}" if approval.get("reason") else ""
                    await record(
                        self.store,
                        state,
                        {
                            "status": "rejected",
                            "content": tools.wrap_error(
                                name,
                                "rejected",
                                f"a person rejected this call{why}. Do not retry it; "
                                "answer without it.",
                            ),
                        },
                        update=existing,
                    )
                    continue
            elif decision.refusal is None and decision.invalid is None:
                assert decision.spec is not None
                if decision.spec.requires_approval:
                    await record(
                        self.store,
                        state,
                        {
                            "type": "tool_call",
                            "status": "pending_approval",
                            "name": name,
                            "tool_call_id": call_id,
                            "arguments": decision.arguments,
                        },
                    )
                    paused = await self.store.transition(
                        state.tenant,
                        state.run_id,
                        ["running"],
                        "requires_approval",
                        lease_until=None,
                    )
                    if paused is None:  # cancelled meanwhile
                        raise Stop(Outcome("cancelled", error=error("cancelled", "cancelled")))
                    state.run = paused
                    return True
            await self._call(state, call_id, name, raw, decision, existing, limit)
        return False

    async def _repeated(
        self, state: State, call_id: str, name: str, raw: str, earlier: StepRow
    ) -> None:
        _log.info("tool_call_repeated", tool=name, repeat_of=earlier.tool_call_id)
        await record(
            self.store,
            state,
            {
                "type": "tool_call",
                "status": "repeated",
                "name": name,
                "tool_call_id": call_id,
                "arguments": _loads(raw),
                "result": {"repeat_of": earlier.tool_call_id, "step": earlier.idx},
                "content": tools.wrap_error(
                    name,
                    "repeated",
                    f"this exact call was already made (tool_call_id {earlier.tool_call_id}); "
                    "its result is above. It was not run again. Answer now from the results "
                    "you have, citing them.",
                ),
                "started_at": datetime.now(UTC),
                "duration_ms": 0,
            },
        )

    async def _call(
        self,
        state: State,
        call_id: str,
        name: str,
        raw: str,
        decision: tools.Decision,
        existing: StepRow | None,
        limit: int,
    ) -> None:
        started = datetime.now(UTC)
        clock = time.perf_counter()
        base: dict[str, Any] = {
            "type": "tool_call",
            "name": name,
            "tool_call_id": call_id,
            "arguments": decision.arguments if decision.spec else _loads(raw),
            "started_at": started,
        }
        fields: dict[str, Any]
        if decision.refusal is not None:
            _log.warning("tool_call_refused", tool=name, reason=decision.refusal)
            fields = {
                "status": "refused",
                "error": error("refused", decision.refusal),
                "content": tools.wrap_error(name, "refused", decision.refusal),
            }
        elif decision.invalid is not None:
            fields = {
                "status": "error",
                "error": error("invalid_arguments", decision.invalid),
                "content": tools.wrap_error(name, "invalid_arguments", decision.invalid),
            }
        else:
            assert decision.spec is not None
            state.check_deadline()
            fields = await self._execute(state, decision.spec, decision.arguments, limit)
        fields["duration_ms"] = ms_since(clock)
        await record(self.store, state, {**base, **fields}, update=existing)

    async def _execute(
        self, state: State, spec: tools.ToolSpec, arguments: dict[str, Any], limit: int
    ) -> dict[str, Any]:
        usage: dict[str, int] | None = None
        try:
            async with asyncio.timeout(min(self.config.tool_timeout_seconds, state.remaining())):
                result, usage = await self.executor.run(
                    spec,
                    arguments,
                    Call(state.tenant, state.agent, state.run_id, state.hop(), state.remaining()),
                )
        except tools.ToolRefused as exc:
            _log.warning("tool_call_refused", tool=spec.name, reason=str(exc))
            return {
                "status": "refused",
                "error": error("refused", str(exc)),
                "content": tools.wrap_error(spec.name, "refused", str(exc)),
            }
        except (tools.ToolFailed, TimeoutError, MeshError) as exc:
            if state.remaining() <= 0:
                state.check_deadline()
            message = str(exc) if not isinstance(exc, TimeoutError) else "the tool took too long"
            if isinstance(exc, MeshError):
                message = f"{exc.code}: {exc.message}"
            return {
                "status": "error",
                "error": error("tool_error", message),
                "content": tools.wrap_error(spec.name, "tool_error", message),
                "usage": usage,
            }
        fields: dict[str, Any] = {
            "status": "ok",
            "result": result,
            "content": tools.wrap_result(spec, spec.name, result, limit),
            "usage": usage,
        }
        if spec.kind == "rag_search" and isinstance(result, dict):
            # Built-in or declarative: every passage a search returned is a citation.
            fields["citations"] = citations.stored(result.get("results") or [])
        return fields


#: Outcomes that answer a call for good: asking again with the same arguments gets the same.
#: A ``tool_error`` (timeout, a service down) may pass, so an identical retry is allowed.
_FINAL = {"ok", "refused", "rejected", "error"}


def call_key(name: str, raw: str) -> str:
    """A call's identity: its tool and its arguments as canonical JSON (key order and
    spacing do not matter); arguments that are not JSON compare as written."""
    try:
        arguments = json.dumps(json.loads(raw or "{}"), sort_keys=True, separators=(",", ":"))
    except (json.JSONDecodeError, RecursionError):
        arguments = raw
    return f"{name}\x00{arguments}"


def answered_before(state: State, name: str, raw: str, call_id: str) -> StepRow | None:
    """The earlier answered step of a call identical to this one, if any."""
    key = call_key(name, raw)
    for s in state.steps:
        if s.type != "model_call" or s.status != "ok":
            continue
        for c in (s.result or {}).get("tool_calls") or []:
            if c.get("id") == call_id:
                continue
            fn = c.get("function") or {}
            if call_key(fn.get("name", ""), fn.get("arguments") or "{}") != key:
                continue
            done = state.by_call.get(c.get("id"))
            if done is None or done.status not in _FINAL:
                continue
            if done.status == "error" and (done.error or {}).get("code") == "tool_error":
                continue
            return done
    return None


def _loads(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
