"""Driving a run on this replica: the loop, plus what other replicas see over NATS.

Watchers on any replica follow a run through its live events (core NATS, not stored:
``agent.events.<run_id>``), and ``cancel`` on any replica reaches the one driving the run
through ``agent.control.<run_id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.aio.client import Client as NATS

from bus.codec import Codec
from bus.errors import MeshError
from schemas.agent import RunEvent, RunResult
from schemas.context import Context
from workers.agent.rows import AgentRow, RunRow
from workers.agent.runs.loop import ANSWER_MARGIN_S, Loop
from workers.agent.runs.state import Emit, Outcome, Stop, error

#: Live events of a run, for watchers on any replica (core NATS, not stored).
EVENTS_PREFIX = "agent.events."
#: Cancel signal to whichever replica drives a run.
CONTROL_PREFIX = "agent.control."


class Driver:
    def __init__(self, loop: Loop, nc: NATS, codec: Codec) -> None:
        self.loop = loop
        self.nc = nc
        self.codec = codec

    async def signal_cancel(self, run_id: str) -> None:
        await self.nc.publish(CONTROL_PREFIX + run_id, b"cancel")

    async def drive(self, run: RunRow, agent_row: AgentRow, ctx: Context, emit: Emit) -> RunResult:
        """Carry a ``running`` run on until it ends or pauses; store and return the result."""
        state = await self.loop.begin(run, agent_row, ctx, self._emitter(run, emit))
        task = asyncio.current_task()
        assert task is not None

        async def on_cancel(_msg: Any) -> None:
            if not state.cancelled and not state.finishing:
                state.cancelled = True
                task.cancel()

        sub = await self.nc.subscribe(CONTROL_PREFIX + run.run_id, cb=on_cancel)
        try:
            try:
                outcome = await self.loop.run(state)
                state.finishing = True  # a late cancel signal must not cut the ending short
            except Stop as stop:
                state.finishing = True
                outcome = stop.outcome
            except asyncio.CancelledError:
                if not state.cancelled:
                    # Not our signal: the caller's deadline, the caller went away, or the
                    # worker is stopping. Record why, then let the cancellation go on.
                    status = "timed_out" if state.remaining() <= ANSWER_MARGIN_S else "cancelled"
                    message = "deadline exceeded" if status == "timed_out" else "interrupted"
                    await asyncio.shield(
                        self.loop.finish(state, Outcome(status, error=error(status, message)))
                    )
                    raise
                task.uncancel()
                outcome = Outcome("cancelled", error=error("cancelled", "cancelled by a user"))
            except Exception as exc:
                # Storage or a bug: try to leave the run failed rather than running.
                code = exc.code if isinstance(exc, MeshError) else "internal"
                with contextlib.suppress(Exception):
                    await self.loop.finish(
                        state, Outcome("failed", error=error(code, "run failed"))
                    )
                raise
        finally:
            if not self.nc.is_closed:
                await sub.unsubscribe()
        return await self.loop.finish(state, outcome)

    def _emitter(self, run: RunRow, emit: Emit) -> Emit:
        subject = EVENTS_PREFIX + run.run_id

        async def both(event: RunEvent) -> None:
            await emit(event)
            if not self.nc.is_closed:
                await self.nc.publish(subject, self.codec.encode({}, event.model_dump()))

        return both
