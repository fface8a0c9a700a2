"""Runs of the Agent Service, one concept per module.

* ``state.py`` — what one drive works on (:class:`State`, :class:`Outcome`), the
  conversation rebuilt from stored steps.
* ``loop.py`` — the run loop (model call → tool calls → results); no NATS.
* ``toolcalls.py`` — pausing for approval, refusing or carrying out a tool call.
* ``driver.py`` — driving a run on this replica: the cancel signal and live events (NATS).
* ``queue.py`` — background runs on JetStream, the driver's lease, abandoned runs.
* ``approvals.py`` — decisions on paused calls, cancelling.
* ``starting.py`` — a new run: prompt, history, answer cache, queue or drive.

:class:`Runs` wires them together for the handlers.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bus.codec import Codec
from workers.agent import netguard
from workers.agent.executor import Executor
from workers.agent.remote import Remote
from workers.agent.runs.approvals import Approvals
from workers.agent.runs.cache import cache_key, cache_tag
from workers.agent.runs.driver import CONTROL_PREFIX, EVENTS_PREFIX, Driver
from workers.agent.runs.loop import Loop
from workers.agent.runs.queue import JOB_SUBJECT, Queue, RunJob
from workers.agent.runs.starting import Starter
from workers.agent.runs.state import Emit, Outcome, conversation, no_emit, usage_of
from workers.agent.runs.toolcalls import ToolCalls
from workers.agent.settings import AgentConfig
from workers.agent.store import Store

__all__ = [
    "CONTROL_PREFIX",
    "EVENTS_PREFIX",
    "JOB_SUBJECT",
    "Emit",
    "Outcome",
    "RunJob",
    "Runs",
    "cache_key",
    "cache_tag",
    "conversation",
    "no_emit",
    "usage_of",
]


class Runs:
    """Starts, drives, resumes and cancels runs; stateless between calls."""

    def __init__(
        self,
        store: Store,
        remote: Remote,
        config: AgentConfig,
        fetcher: netguard.SafeFetcher,
        nc: NATS,
        js: JetStreamContext,
        codec: Codec,
    ) -> None:
        self.config = config
        self.nc = nc
        self.js = js
        executor = Executor(store, remote, fetcher, config.default_model)
        loop = Loop(store, remote, config, ToolCalls(store, executor, config))
        self.driver = Driver(loop, nc, codec)
        self.queue = Queue(store, js, codec, self.driver)
        self.approvals = Approvals(store, self.queue, self.driver)
        self.starter = Starter(store, remote, config, loop, self.queue, self.driver)
        self.start = self.starter.start
        self.decide = self.approvals.decide
        self.cancel = self.approvals.cancel
        self.run_job = self.queue.run_job
        self.job_failed = self.queue.job_failed
        self.expire_if_abandoned = self.queue.expire_if_abandoned
