"""The run loop: generate → tool calls → results, until an answer or a limit.

Everything a run needs is in Postgres: the run row holds the messages of the first model
call (``input_messages``) and each step holds what followed (the assistant message of a
model call, the tool message of a tool call), so :func:`~workers.agent.runs.state.conversation`
rebuilds the exact messages of every model call from storage. That is what lets any
replica drive a run, resume it after an approval, and what makes the stored steps a
replay of the run.

A run ends ``succeeded`` (an answer without tool calls), ``failed`` (step limit, token
budget, context window, model error), ``timed_out`` (its deadline), ``cancelled``, or
pauses in ``requires_approval`` until a decision on the paused tool call.

No NATS here: the loop talks to other services through :class:`Remote` and to storage
through :class:`Store`; ``driver.py`` adds the cancel signal and the live events.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from bus.context import child, now_ms
from bus.errors import MeshError, Timeout
from schemas.agent import Agent, RunEvent, RunResult
from schemas.context import Context
from schemas.gateway import GenerateRequest, GenerateResponse
from workers.agent import citations, history, views
from workers.agent.remote import Remote
from workers.agent.rows import AgentRow, RunRow
from workers.agent.runs.cache import cache_tag
from workers.agent.runs.state import (
    Emit,
    Outcome,
    State,
    Stop,
    conversation,
    error,
    record,
    toolbox,
    usage_of,
)
from workers.agent.runs.toolcalls import ToolCalls, ms_since
from workers.agent.settings import AgentConfig
from workers.agent.store import Store

_log = structlog.get_logger(__name__)

#: Time kept back from a caller's deadline to store the outcome and answer.
ANSWER_MARGIN_S = 1.0


class Loop:
    def __init__(
        self, store: Store, remote: Remote, config: AgentConfig, tool_calls: ToolCalls
    ) -> None:
        self.store = store
        self.remote = remote
        self.config = config
        self.tool_calls = tool_calls

    def model(self, agent: Agent) -> str:
        return agent.llm_model or self.config.default_model

    async def begin(self, run: RunRow, agent_row: AgentRow, ctx: Context, emit: Emit) -> State:
        """The state of a drive of a ``running`` run: its stored steps and its deadline."""
        tenant = str(run.tenant_id)
        agent = views.agent(agent_row)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + agent.limits.timeout_seconds
        if ctx.deadline is not None:
            deadline = min(
                deadline, loop.time() + (ctx.deadline - now_ms()) / 1000 - ANSWER_MARGIN_S
            )
        # Tools are decided by the roles of the user who started the run, whoever resumes it.
        return State(
            run=run,
            agent=agent,
            toolbox=await toolbox(self.store, tenant, agent, tuple(run.roles)),
            steps=await self.store.steps(tenant, run.run_id),
            deadline=deadline,
            ctx=ctx,
            emit=emit,
        )

    async def run(self, state: State) -> Outcome:
        """Model calls and tool calls until an outcome; a limit raises :class:`Stop`."""
        limits = state.agent.limits
        while True:
            last = state.last_model()
            if last is not None and last.status == "ok":
                calls = last.result.get("tool_calls") or []
                if not calls:
                    return Outcome("succeeded", output=last.result.get("content") or "")
                if await self.tool_calls.answer(state, calls):
                    return Outcome("requires_approval")
            if state.cancelled or await self.store.cancel_requested(state.tenant, state.run_id):
                return Outcome("cancelled", error=error("cancelled", "cancelled by a user"))
            if state.model_calls() >= limits.max_steps:
                return Outcome(
                    "failed",
                    error=error("step_limit", f"no answer within {limits.max_steps} model calls"),
                )
            used = usage_of(state.steps)["total_tokens"]
            if used >= limits.token_budget:
                return Outcome(
                    "failed",
                    error=error("token_budget", f"{used} tokens used of {limits.token_budget}"),
                )
            state.check_deadline()
            self._check_window(state)
            await self._model_call(state)

    def _check_window(self, state: State) -> None:
        """Tool results grow a run's conversation: stop before the model's window is full."""
        last = state.last_model()
        if last is None or not last.usage:
            return
        used = int(last.usage.get("prompt_tokens", 0)) + int(last.usage.get("completion_tokens", 0))
        later = [s.content for s in state.steps if s.idx > last.idx and s.content]
        used += sum(history.estimate(text) + history.PER_MESSAGE_TOKENS for text in later)
        reserve = state.agent.parameters.max_tokens or self.config.reply_reserve_tokens
        if used + reserve > state.agent.limits.context_window:
            raise Stop(
                Outcome(
                    "failed",
                    error=error(
                        "context_window",
                        f"the conversation needs about {used + reserve} tokens; the window is "
                        f"{state.agent.limits.context_window}",
                    ),
                )
            )

    async def _model_call(self, state: State) -> None:
        agent = state.agent
        offered = state.toolbox.offered
        # After a repeated call, and on the last model call the limit allows, the model
        # answers from the results it has (smolagents' final answer at max_steps): a run
        # that has its passages should end with an answer, not with step_limit.
        final = state.model_calls() + 1 >= agent.limits.max_steps
        choice = "none" if offered and (final or _repeated_since_model(state)) else None
        request = GenerateRequest.model_validate(
            {
                "model": self.model(agent),
                "messages": conversation(state.run.input_messages, state.steps),
                "temperature": agent.parameters.temperature,
                "max_tokens": agent.parameters.max_tokens,
                "seed": agent.parameters.seed,
                "tools": [s.openai() for s in offered] or None,
                "tool_choice": choice,
            }
        )
        started = datetime.now(UTC)
        clock = time.perf_counter()
        call = {
            "model": request.model,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "tools": [s.name for s in offered],
        }
        if choice:
            call["tool_choice"] = choice
            if final:
                call["final"] = True
        try:
            if state.run.stream:

                async def on_token(text: str) -> None:
                    await state.emit(RunEvent(event="token", run_id=state.run_id, delta=text))

                response = await self.remote.stream(request, state.hop(), on_token)
            else:
                response = await self.remote.generate(request, state.hop())
        except MeshError as exc:
            timed_out = isinstance(exc, Timeout) and state.remaining() <= 0.05
            await record(
                self.store,
                state,
                {
                    "type": "model_call",
                    "status": "timed_out" if timed_out else "error",
                    "name": request.model,
                    "arguments": call,
                    "error": error(exc.code, exc.message),
                    "started_at": started,
                    "duration_ms": ms_since(clock),
                },
            )
            if timed_out:
                state.check_deadline()
            raise Stop(
                Outcome("failed", error=error("model_error", f"{exc.code}: {exc.message}"))
            ) from None
        await record(
            self.store,
            state,
            {
                "type": "model_call",
                "status": "ok",
                "name": response.model,
                "arguments": call,
                "result": _assistant(response),
                "usage": response.usage.model_dump(),
                "finish_reason": response.finish_reason,
                "started_at": started,
                "duration_ms": ms_since(clock),
            },
        )

    async def finish(self, state: State, outcome: Outcome) -> RunResult:
        """Store the outcome (unless decided elsewhere meanwhile) and report the run."""
        tenant, run_id = state.tenant, state.run_id
        usage = usage_of(state.steps)
        if outcome.status == "requires_approval":
            await self.store.transition(
                tenant, run_id, ["requires_approval"], "requires_approval", usage=usage
            )
        else:
            row = await self.store.transition(
                tenant,
                run_id,
                ["running"],
                outcome.status,
                output=outcome.output,
                error=outcome.error,
                usage=usage,
                lease_until=None,
            )
            if row is None:  # decided elsewhere (cancelled while paused): report that
                row = await self.store.get_run(tenant, run_id)
            elif outcome.status == "succeeded":
                await self._after_success(state, row, outcome.output or "")
        row = await self.store.get_run(tenant, run_id)
        result = views.run(row, state.steps)
        _log.info("run_finished", run_id=run_id, status=row.status, steps=len(state.steps))
        await state.emit(
            RunEvent(event="done", run_id=run_id, thread_id=row.thread_id, result=result)
        )
        return result

    async def _after_success(self, state: State, row: RunRow, output: str) -> None:
        if row.thread_id:
            await self.store.add_message(
                state.tenant, row.thread_id, "assistant", output, state.run_id
            )
        if row.cache_key:
            passages = [entry for _, entry in citations.distinct(state.steps)]
            await self.remote.cache_set(
                row.cache_key,
                {"output": output, "run_id": state.run_id, "citations": passages},
                [cache_tag(state.agent.agent_id)],
                state.hop() if state.remaining() > 0 else child(state.ctx, timeout=2.0),
            )


def _repeated_since_model(state: State) -> bool:
    last = state.last_model()
    after = last.idx if last is not None else -1
    return any(
        s.type == "tool_call" and s.status == "repeated" and s.idx > after for s in state.steps
    )


def _assistant(response: GenerateResponse) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": response.message.content}
    if response.message.tool_calls:
        message["tool_calls"] = [c.model_dump() for c in response.message.tool_calls]
    return message
