"""The Agent Service's worker (``agent.<operation>.request``) and its lifespan.

The handlers live per resource in ``handlers/``, the runs in ``runs/``; this module wires
them to their operations and opens what they need (the pool, the run consumer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bus import offload
from bus.codec import Codec
from bus.jetstream import ConsumerSpec, JobConsumer
from bus.lifespan import background, database
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import agent
from workers.agent import netguard
from workers.agent.handlers import Handlers
from workers.agent.remote import Remote
from workers.agent.runs import RunJob, Runs
from workers.agent.settings import AgentConfig
from workers.agent.store import Store, prepare

VERSION = "0.1.0"
#: Connections of the worker's pool: handlers hold one only for a statement or a short
#: transaction (never across a bus call), so a few dozen serve MAX_CONCURRENCY handlers.
DB_POOL_SIZE = 20
#: JetStream consumer of queued background runs (stream AGENT_RUNS, bus/jetstream.py).
RUNS_CONSUMER = ConsumerSpec(
    stream="AGENT_RUNS",
    durable="agent-runs",
    filter_subject="agent.runs.>",
    max_deliver=3,
    backoff=(2.0, 10.0, 30.0),
    ack_wait=60.0,
    batch=4,
)


def build_worker(h: Handlers, codec: Codec | None = None, max_concurrency: int = 64) -> Worker:
    return Worker(
        "agent",
        endpoints=[
            Endpoint(agent.CREATE, h.agents.create),
            Endpoint(agent.GET, h.agents.get),
            Endpoint(agent.LIST, h.agents.list_agents),
            Endpoint(agent.UPDATE, h.agents.update),
            Endpoint(agent.DELETE, h.agents.delete),
            Endpoint(agent.EXECUTE, h.runs.execute),
            Endpoint(agent.STREAM, h.runs.stream),
            Endpoint(agent.GET_RUN, h.runs.get_run),
            Endpoint(agent.LIST_RUNS, h.runs.list_runs),
            Endpoint(agent.WATCH, h.runs.watch),
            Endpoint(agent.APPROVE, h.runs.approve),
            Endpoint(agent.REJECT, h.runs.reject),
            Endpoint(agent.CANCEL, h.runs.cancel),
            Endpoint(agent.CHAT, h.chat.chat),
            Endpoint(agent.CHAT_STREAM, h.chat.chat_stream),
            Endpoint(agent.LIST_THREADS, h.chat.list_threads),
            Endpoint(agent.GET_THREAD, h.chat.get_thread),
            Endpoint(agent.DELETE_THREAD, h.chat.delete_thread),
            Endpoint(agent.ADD_MEMORY, h.memory.add_memory),
            Endpoint(agent.LIST_MEMORIES, h.memory.list_memories),
            Endpoint(agent.SEARCH_MEMORIES, h.memory.search_memories),
            Endpoint(agent.DELETE_MEMORY, h.memory.delete_memory),
            Endpoint(agent.LIST_TOOLS, h.tools.list_tools),
            Endpoint(agent.GET_TOOL, h.tools.get_tool),
            Endpoint(agent.CREATE_TOOL, h.tools.create_tool),
            Endpoint(agent.UPDATE_TOOL, h.tools.update_tool),
            Endpoint(agent.DELETE_TOOL, h.tools.delete_tool),
            Endpoint(agent.GET_SETTINGS, h.tools.get_settings),
            Endpoint(agent.UPDATE_SETTINGS, h.tools.update_settings),
        ],
        version=VERSION,
        description="Agents, tool-calling runs, chat threads and memory",
        codec=codec or Codec(),
        max_concurrency=max_concurrency,
    )


@asynccontextmanager
async def serving_parts(
    env: WorkerEnv,
    *,
    config: AgentConfig | None = None,
    fetcher: netguard.SafeFetcher | None = None,
) -> AsyncIterator[Worker]:
    """The worker and, unless disabled, the consumer of queued runs; for tests too."""
    config = config or AgentConfig()
    codec = Codec(env.settings.codec_type)
    async with database(env.settings, max_size=DB_POOL_SIZE) as db:
        await prepare(db)
        store = Store(db)
        remote = Remote(env.client, config)
        runs = Runs(store, remote, config, fetcher or netguard.SafeFetcher(), env.nc, env.js, codec)
        worker = build_worker(
            Handlers.build(store, runs, remote, codec), codec, env.settings.max_concurrency
        )
        if not config.run_consumer:
            yield worker
            return
        consumer = JobConsumer(
            env.js, RUNS_CONSUMER, RunJob, runs.run_job, on_failed=runs.job_failed, codec=codec
        )
        async with background(asyncio.Event(), consumer.run):
            yield worker


@asynccontextmanager
async def lifespan(env: WorkerEnv) -> AsyncIterator[Worker]:
    # The schema pool stops after the worker and its run consumer have stopped.
    async with offload.using(env.settings), serving_parts(env) as worker:
        yield worker
