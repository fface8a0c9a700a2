"""Hard budgets, enforced before any provider is called, without a round trip per call.

The LLMOps worker puts one entry per budget into the NATS KV bucket ``LLMOPS_BUDGETS``
(:class:`schemas.llmops.BudgetState`); this module watches the bucket and keeps the
exhausted hard budgets in memory, so a check is a dictionary lookup. A call of a tenant or
user whose hard budget is exhausted is answered ``rate_limited`` with
``details.reason = "budget_exceeded"``. The block lifts by itself at the period's end.
How late a block can come (the design lag) is written in docs/services/llmops.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from nats.js import JetStreamContext
from pydantic import ValidationError

from bus import jetstream
from bus.errors import RateLimited
from schemas.context import Context
from schemas.llmops import BudgetState

_log = structlog.get_logger(__name__)

#: Wait between attempts to (re)start the watch when NATS or the bucket is not there.
RETRY_S = 2.0


class BudgetGuard:
    def __init__(self) -> None:
        # (tenant, user or None) -> {kv key: state} of exhausted hard budgets only.
        self._blocked: dict[tuple[str, str | None], dict[str, BudgetState]] = {}
        self._where: dict[str, tuple[str, str | None]] = {}
        self.ready = asyncio.Event()

    def check(self, ctx: Context) -> None:
        """Raise ``rate_limited`` if a hard budget of the caller's tenant or user is spent."""
        if not self._blocked or not ctx.tenant:
            return
        now_ms = time.time() * 1000
        whom: list[tuple[str, str | None]] = [(ctx.tenant, None)]
        if ctx.user:
            whom.append((ctx.tenant, ctx.user))
        for who in whom:
            for state in self._blocked.get(who, {}).values():
                if now_ms < state.period_end_ms:
                    raise RateLimited(
                        f"the {state.scope}'s {state.period}ly budget of "
                        f"{state.limit_usd} USD is spent",
                        {
                            "reason": "budget_exceeded",
                            "scope": state.scope,
                            "period": state.period,
                            "limit_usd": state.limit_usd,
                            "spent_usd": state.spent_usd,
                            "retry_after": max(1.0, (state.period_end_ms - now_ms) / 1000),
                        },
                    )

    def apply(self, key: str, value: bytes | None) -> None:
        """One KV update (``None``: the key was deleted)."""
        where = self._where.pop(key, None)
        if where is not None:
            entries = self._blocked.get(where, {})
            entries.pop(key, None)
            if not entries:
                self._blocked.pop(where, None)
        if not value:
            return
        try:
            state = BudgetState.model_validate_json(value)
        except ValidationError:
            _log.warning("budget_state_invalid", key=key)
            return
        if state.hard and state.exhausted:
            who = (state.tenant, state.user if state.scope == "user" else None)
            self._blocked.setdefault(who, {})[key] = state
            self._where[key] = who

    async def watch(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        """Follow the bucket until ``stop``; restart the watch if it fails."""
        while not stop.is_set():
            try:
                kv = await jetstream.budgets_bucket(js)
                watcher = await kv.watchall()
                try:
                    while not stop.is_set():
                        try:
                            entry = await watcher.updates(timeout=1.0)
                        except TimeoutError:
                            continue
                        if entry is None:  # the initial values are all in
                            self.ready.set()
                            continue
                        deleted = entry.operation in ("DEL", "PURGE")
                        self.apply(entry.key, None if deleted else entry.value)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            except Exception as exc:
                _log.warning("budget_watch_failed", error=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_S)


@asynccontextmanager
async def watching(js: JetStreamContext) -> AsyncIterator[BudgetGuard]:
    guard = BudgetGuard()
    stop = asyncio.Event()
    task = asyncio.create_task(guard.watch(js, stop))
    try:
        yield guard
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
