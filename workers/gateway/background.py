"""Work done after the caller has its answer: LLMOps events, cache stores.

A bounded queue drained by one task in the worker's lifespan. Submitting never waits and
never raises: a full queue drops the job and counts it, a failing job is logged and
counted. So a slow or broken JetStream or cache can never slow or fail a request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog

_log = structlog.get_logger(__name__)

#: Jobs waiting at most; past it new jobs are dropped (and counted).
DEFAULT_MAX_PENDING = 10_000
#: Jobs running at once.
DEFAULT_CONCURRENCY = 32
#: How long stopping waits for pending jobs before cancelling them.
DEFAULT_DRAIN_TIMEOUT_S = 5.0

Job = Callable[[], Awaitable[None]]


@dataclass
class Counters:
    done: int = 0
    failed: int = 0
    dropped: int = 0


class Background:
    def __init__(
        self,
        max_pending: int = DEFAULT_MAX_PENDING,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.max_pending = max_pending
        self.counters: dict[str, Counters] = {}
        self._queue: asyncio.Queue[tuple[str, Job] | None] = asyncio.Queue()
        self._slots = asyncio.Semaphore(concurrency)
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending = 0

    def submit(self, kind: str, job: Job) -> bool:
        """Queue ``job``; ``False`` (and counted as dropped) if the queue is full."""
        counters = self.counters.setdefault(kind, Counters())
        if self._pending >= self.max_pending:
            counters.dropped += 1
            if counters.dropped == 1 or counters.dropped % 1000 == 0:
                _log.warning("background_dropped", kind=kind, dropped=counters.dropped)
            return False
        self._pending += 1
        self._idle.clear()
        self._queue.put_nowait((kind, job))
        return True

    async def idle(self) -> None:
        """Wait until every submitted job has finished (tests, shutdown)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Drain the queue until :meth:`stop`; jobs run concurrently, bounded."""
        async with asyncio.TaskGroup() as tasks:
            while (item := await self._queue.get()) is not None:
                await self._slots.acquire()
                tasks.create_task(self._run_one(*item))

    def stop(self) -> None:
        self._queue.put_nowait(None)

    async def _run_one(self, kind: str, job: Job) -> None:
        counters = self.counters[kind]
        try:
            await job()
            counters.done += 1
        except Exception as exc:
            counters.failed += 1
            _log.warning("background_failed", kind=kind, error=type(exc).__name__)
        finally:
            self._slots.release()
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()


@contextlib.asynccontextmanager
async def running(
    background: Background, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S
) -> AsyncIterator[Background]:
    """Run the drain task for the body; on exit finish pending jobs (bounded), then stop."""
    task = asyncio.create_task(background.run())
    try:
        yield background
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await background.idle()
        background.stop()
        try:
            async with asyncio.timeout(1.0):
                await task
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
