"""Waiting out a dependency that is down, inside one JetStream delivery.

A durable job whose database or downstream service is unavailable should wait, not burn
its deliveries: after ``max_deliver`` naks JetStream stops redelivering, so a Postgres
restart longer than the consumer's backoff would strand the job. :func:`until_available`
retries the job's work on ``unavailable``/``timeout`` with capped exponential backoff for
up to ``budget`` seconds (the consumer's progress heartbeat keeps the message from being
redelivered meanwhile), then lets the error through to the consumer's own retry policy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from bus.context import now_ms
from bus.errors import RetryableError, translate
from schemas.context import Context

T = TypeVar("T")

_log = structlog.get_logger(__name__)

#: How long one delivery waits for its dependencies before handing back to JetStream.
DEFAULT_BUDGET_S = 300.0
FIRST_PAUSE_S = 0.25
MAX_PAUSE_S = 5.0


def job_context(ctx: Context, timeout: float) -> Context:
    """A job's context with a fresh deadline: the publisher's has long passed."""
    return ctx.model_copy(update={"deadline": now_ms() + int(timeout * 1000)})


async def until_available(
    work: Callable[[], Awaitable[T]],
    *,
    budget: float = DEFAULT_BUDGET_S,
    stopping: asyncio.Event | None = None,
    what: str = "job",
) -> T:
    """Run ``work`` until it succeeds, raises a non-retryable error, or ``budget`` runs out.

    ``stopping`` set (the process is shutting down) ends the wait at once, so the job is
    nak'ed and picked up by another replica instead of delaying the shutdown.
    """
    give_up = time.monotonic() + budget
    pause = FIRST_PAUSE_S
    while True:
        try:
            return await work()
        except Exception as exc:
            error = translate(exc)
            if not isinstance(error, RetryableError):
                raise
            if (stopping is not None and stopping.is_set()) or time.monotonic() + pause > give_up:
                raise error from exc
            _log.warning("dependency_wait", what=what, error=error.message, pause=pause)
        if stopping is not None:
            try:
                await asyncio.wait_for(stopping.wait(), pause)
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE_S)
