"""Agent Service endpoints (``agent.<operation>.request``) and the worker's lifespan.

Every handler loads what it needs from Postgres, scoped by ``ctx.tenant``; nothing is
kept in memory between requests, so any replica answers any request. Threads and runs
belong to the user who made them (``agent:admin`` sees all); see ``policy`` for roles.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import nats.errors
import structlog

from bus import offload
from bus.codec import Codec
from bus.errors import Conflict, Forbidden, InvalidRequest, MeshError, NotFound
from bus.jetstream import ConsumerSpec, JobConsumer, publish
from bus.postgres import create_database
from bus.sql import tenant_of
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import agent
from schemas.agent import (
    TERMINAL_STATUSES,
    Agent,
    AgentCreateRequest,
    AgentDeleteRequest,
    AgentDeleteResponse,
    AgentGetRequest,
    AgentList,
    AgentListRequest,
    AgentSettings,
    AgentUpdateRequest,
    ApproveRequest,
    CancelRequest,
    ChatRequest,
    ChatResponse,
    Deleted,
    ExecuteRequest,
    MemoryAddRequest,
    MemoryDeleteRequest,
    MemoryItem,
    MemoryList,
    MemoryListRequest,
    MemorySearchRequest,
    RunEvent,
    RunGetRequest,
    RunList,
    RunListRequest,
    RunResult,
    SettingsGetRequest,
    SettingsUpdateRequest,
    Thread,
    ThreadDeleteRequest,
    ThreadGetRequest,
    ThreadList,
    ThreadListRequest,
    Tool,
    ToolCreateRequest,
    ToolDeleteRequest,
    ToolGetRequest,
    ToolList,
    ToolListRequest,
    ToolUpdateRequest,
    WatchRequest,
)
from schemas.context import Context
from workers.agent import netguard, policy, tools, views
from workers.agent.remote import Remote
from workers.agent.runs import EVENTS_PREFIX, Emit, RunJob, Runs, cache_tag
from workers.agent.settings import AgentConfig
from workers.agent.store import Row, Store, prepare

_log = structlog.get_logger(__name__)

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
#: How long ``cancel`` waits for a running run to stop before answering.
CANCEL_WAIT_S = 3.0
WATCH_POLL_S = 1.0
#: Newest thread messages considered for a chat turn's history (then trimmed to fit).
MAX_HISTORY_MESSAGES = 400
#: Agent fields an update may set to null.
NULLABLE = frozenset({"description", "llm_provider"})


class AgentService:
    def __init__(self, store: Store, runs: Runs, remote: Remote, codec: Codec) -> None:
        self.store = store
        self.runs = runs
        self.remote = remote
        self.codec = codec

    # --- agents ----------------------------------------------------------------------

    async def _check_attach(
        self, tenant: str, names: list[str], ctx: Context, already: Sequence[str] = ()
    ) -> None:
        """Every newly attached tool exists, and the caller holds its roles."""
        new = [n for n in dict.fromkeys(names) if n not in already]
        declared = {
            r["name"]: tools.declared_spec(r)
            for r in await self.store.list_tools(
                tenant, [n for n in new if n not in tools.BUILTINS]
            )
        }
        for name in new:
            spec = declared.get(name) or (
                tools.builtin_spec(name) if name in tools.BUILTINS else None
            )
            if spec is None:
                raise InvalidRequest(f"no tool named {name!r}")
            if not policy.holds(ctx.roles, spec.required_roles):
                raise Forbidden(f"attaching {name} needs role(s) {', '.join(spec.required_roles)}")

    async def create(self, req: AgentCreateRequest, ctx: Context) -> Agent:
        tenant = tenant_of(ctx)
        await self._check_attach(tenant, req.tools, ctx)
        _check_approval_list(req.approval_required, req.tools)
        row = await self.store.insert_agent(
            tenant,
            {
                "name": req.name,
                "description": req.description,
                "llm_model": req.llm_model or self.runs.config.default_model,
                "llm_provider": req.llm_provider,
                "system_prompt": req.system_prompt,
                "status": req.status,
                "capabilities": req.capabilities,
                "tools": list(dict.fromkeys(req.tools)),
                "rag_collections": list(dict.fromkeys(req.rag_collections)),
                "approval_required": list(dict.fromkeys(req.approval_required)),
                "parameters": req.parameters.model_dump(),
                "limits": req.limits.model_dump(),
                "memory": req.memory.model_dump(),
                "created_by": policy.user_of(ctx),
            },
        )
        await self._event("agent.created", row["agent_id"], ctx)
        return views.agent(row)

    async def _event(self, name: str, agent_id: str, ctx: Context) -> None:
        try:
            await publish(
                self.runs.js,
                f"events.domain.{name}",
                {"agent_id": agent_id},
                ctx,
                msg_id=f"{name}:{agent_id}",
                codec=self.codec,
            )
        except MeshError as exc:  # the agent exists either way; the event is a notice
            _log.warning("domain_event_failed", event=name, error=exc.code)

    async def get(self, req: AgentGetRequest, ctx: Context) -> Agent:
        return views.agent(await self.store.get_agent(tenant_of(ctx), req.agent_id))

    async def list_agents(self, req: AgentListRequest, ctx: Context) -> AgentList:
        rows, cursor = await self.store.list_agents(
            tenant_of(ctx),
            status=req.status,
            search=req.search,
            include_archived=req.include_archived,
            cursor=req.cursor,
            limit=req.limit,
        )
        return AgentList(items=[views.agent(r) for r in rows], next_cursor=cursor)

    async def update(self, req: AgentUpdateRequest, ctx: Context) -> Agent:
        tenant = tenant_of(ctx)
        fields = req.model_dump(exclude_unset=True, exclude={"agent_id", "version"})
        if not fields:
            raise InvalidRequest("nothing to change")
        nulls = sorted(k for k, v in fields.items() if v is None and k not in NULLABLE)
        if nulls:
            raise InvalidRequest(f"{', '.join(nulls)} cannot be null")
        current = await self.store.get_agent(tenant, req.agent_id)
        policy.require_agent_owner(ctx, current["created_by"])
        if "tools" in fields:
            await self._check_attach(tenant, fields["tools"], ctx, current["tools"])
            fields["tools"] = list(dict.fromkeys(fields["tools"]))
        _check_approval_list(
            fields.get("approval_required", current["approval_required"]),
            fields.get("tools", current["tools"]),
        )
        row = await self.store.update_agent(tenant, req.agent_id, req.version, fields)
        return views.agent(row)

    async def delete(self, req: AgentDeleteRequest, ctx: Context) -> AgentDeleteResponse:
        tenant = tenant_of(ctx)
        row = await self.store.get_agent(tenant, req.agent_id)
        policy.require_agent_owner(ctx, row["created_by"])
        status: Literal["deleted", "archived"]
        if req.hard:
            await self.store.delete_agent(tenant, req.agent_id)
            status = "deleted"
        else:
            if row["status"] != "archived":
                await self.store.update_agent(
                    tenant, req.agent_id, row["version"], {"status": "archived"}
                )
            status = "archived"
        await self.remote.cache_invalidate(cache_tag(req.agent_id), ctx)
        return AgentDeleteResponse(agent_id=req.agent_id, status=status)

    # --- tools and settings ----------------------------------------------------------

    async def list_tools(self, req: ToolListRequest, ctx: Context) -> ToolList:
        builtins = [_builtin_view(kind) for kind in tools.BUILTINS]
        declared = [views.tool(r) for r in await self.store.list_tools(tenant_of(ctx))]
        return ToolList(items=builtins + declared)

    async def get_tool(self, req: ToolGetRequest, ctx: Context) -> Tool:
        if req.name in tools.BUILTINS:
            return _builtin_view(req.name)
        return views.tool(await self.store.get_tool(tenant_of(ctx), req.name))

    async def create_tool(self, req: ToolCreateRequest, ctx: Context) -> Tool:
        policy.require_tools_write(ctx)
        if req.name in tools.BUILTINS:
            raise InvalidRequest(f"{req.name} is a built-in tool")
        await tools.check_declaration_off_loop(req.parameters, req.implementation, tenant_of(ctx))
        row = await self.store.insert_tool(
            tenant_of(ctx),
            {
                "name": req.name,
                "description": req.description,
                "parameters": req.parameters,
                "implementation": req.implementation.model_dump(),
                "required_roles": list(dict.fromkeys(req.required_roles)),
                "requires_approval": req.requires_approval,
                "created_by": policy.user_of(ctx),
            },
        )
        return views.tool(row)

    async def update_tool(self, req: ToolUpdateRequest, ctx: Context) -> Tool:
        policy.require_tools_write(ctx)
        tenant = tenant_of(ctx)
        if req.name in tools.BUILTINS:
            raise InvalidRequest(f"{req.name} is a built-in tool")
        current = await self.store.get_tool(tenant, req.name)
        fields = req.model_dump(exclude_unset=True, exclude={"name", "version"})
        if any(v is None for v in fields.values()):
            raise InvalidRequest("fields cannot be set to null")
        if "implementation" in fields and req.implementation is not None:
            fields["implementation"] = req.implementation.model_dump()
        merged = {**current, **fields}
        if merged["parameters"].get("type") != "object":
            raise InvalidRequest('parameters must be a JSON Schema with "type": "object"')
        await tools.check_declaration_off_loop(
            merged["parameters"], _implementation(merged), tenant
        )
        row = await self.store.update_tool(tenant, req.name, req.version, fields)
        return views.tool(row)

    async def delete_tool(self, req: ToolDeleteRequest, ctx: Context) -> Deleted:
        policy.require_tools_write(ctx)
        tenant = tenant_of(ctx)
        if req.name in tools.BUILTINS:
            raise InvalidRequest(f"{req.name} is a built-in tool")
        using = await self.store.agents_using_tool(tenant, req.name)
        if using:
            raise Conflict(f"tool {req.name} is attached to agents", {"agents": using})
        return Deleted(deleted=await self.store.delete_tool(tenant, req.name))

    async def get_settings(self, req: SettingsGetRequest, ctx: Context) -> AgentSettings:
        return AgentSettings.model_validate(await self.store.get_settings(tenant_of(ctx)))

    async def update_settings(self, req: SettingsUpdateRequest, ctx: Context) -> AgentSettings:
        policy.require_tools_write(ctx)
        for entry in req.http_allowlist:
            if reason := netguard.check_allowlist_entry(entry):
                raise InvalidRequest(f"{entry} can never be fetched: {reason}")
        row = await self.store.put_settings(
            tenant_of(ctx), list(dict.fromkeys(e.lower() for e in req.http_allowlist)), req.version
        )
        return AgentSettings.model_validate(row)

    # --- runs ------------------------------------------------------------------------

    async def execute(self, req: ExecuteRequest, ctx: Context) -> RunResult:
        return await self._execute(req, ctx)

    async def _execute(
        self, req: ExecuteRequest, ctx: Context, emit: Emit | None = None
    ) -> RunResult:
        agent_row = await self.store.get_agent(tenant_of(ctx), req.agent_id)
        kwargs: dict[str, Any] = {"emit": emit} if emit else {}
        return await self.runs.start(
            agent_row,
            req.task,
            ctx,
            user=policy.user_of(ctx),
            stream=req.stream or emit is not None,
            background=req.background,
            use_cache=req.cache,
            **kwargs,
        )

    async def stream(self, req: ExecuteRequest, ctx: Context) -> AsyncIterator[RunEvent]:
        async for event in _events(lambda emit: self._execute(req, ctx, emit)):
            yield event

    async def _visible_run(self, run_id: str, agent_id: str | None, ctx: Context) -> Row:
        run = await self.store.get_run(tenant_of(ctx), run_id)
        if (agent_id and run["agent_id"] != agent_id) or not (
            policy.may_see(ctx, run["user_id"]) or policy.may_approve(ctx, run["user_id"])
        ):
            raise NotFound(f"run {run_id} not found")
        return await self.runs.expire_if_abandoned(run)

    async def get_run(self, req: RunGetRequest, ctx: Context) -> RunResult:
        run = await self._visible_run(req.run_id, req.agent_id, ctx)
        result = views.run(run, await self.store.steps(tenant_of(ctx), req.run_id))
        if req.include_messages:
            result.input_messages = run["input_messages"]
        return result

    async def list_runs(self, req: RunListRequest, ctx: Context) -> RunList:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        rows, cursor = await self.store.list_runs(
            tenant,
            req.agent_id,
            user=None if policy.is_admin(ctx) else policy.user_of(ctx),
            status=req.status,
            thread_id=req.thread_id,
            cursor=req.cursor,
            limit=req.limit,
        )
        return RunList(items=[views.run_summary(r) for r in rows], next_cursor=cursor)

    async def approve(self, req: ApproveRequest, ctx: Context) -> RunResult:
        return await self._decide(req, ctx, approved=True)

    async def reject(self, req: ApproveRequest, ctx: Context) -> RunResult:
        return await self._decide(req, ctx, approved=False)

    async def _decide(self, req: ApproveRequest, ctx: Context, *, approved: bool) -> RunResult:
        run = await self._visible_run(req.run_id, req.agent_id, ctx)
        if not policy.may_approve(ctx, run["user_id"]):
            raise Forbidden(f"needs role {policy.APPROVER} to decide on another user's run")
        return await self.runs.decide(
            run, req.tool_call_id, approved, req.reason, ctx, policy.user_of(ctx)
        )

    async def cancel(self, req: CancelRequest, ctx: Context) -> RunResult:
        tenant = tenant_of(ctx)
        await self._visible_run(req.run_id, req.agent_id, ctx)
        row = await self.runs.cancel(tenant, req.run_id)
        loop = asyncio.get_running_loop()
        until = loop.time() + CANCEL_WAIT_S
        while row["status"] == "running" and loop.time() < until:
            await asyncio.sleep(0.05)
            row = await self.runs.expire_if_abandoned(await self.store.get_run(tenant, req.run_id))
        return views.run(row, await self.store.steps(tenant, req.run_id))

    async def watch(self, req: WatchRequest, ctx: Context) -> AsyncIterator[RunEvent]:
        tenant = tenant_of(ctx)
        run = await self._visible_run(req.run_id, req.agent_id, ctx)
        # Subscribe before reading what is stored, so nothing falls between the two.
        sub = await self.runs.nc.subscribe(EVENTS_PREFIX + req.run_id)
        try:
            yield RunEvent(event="run", run_id=req.run_id, thread_id=run["thread_id"])
            seen: dict[int, str] = {}
            for event in await self._new_steps(tenant, req.run_id, seen):
                yield event
            while run["status"] not in TERMINAL_STATUSES and run["status"] != "requires_approval":
                try:
                    msg = await sub.next_msg(timeout=WATCH_POLL_S)
                except nats.errors.TimeoutError:
                    run = await self.runs.expire_if_abandoned(
                        await self.store.get_run(tenant, req.run_id)
                    )
                    for event in await self._new_steps(tenant, req.run_id, seen):
                        yield event
                    continue
                event = RunEvent.model_validate(self.codec.decode(msg.data)[1])
                if event.event == "done":
                    break
                if event.event == "step" and event.step is not None:
                    if seen.get(event.step.index) == event.step.status:
                        continue
                    seen[event.step.index] = event.step.status
                if event.event != "run":
                    yield event
            for event in await self._new_steps(tenant, req.run_id, seen):
                yield event
            final = await self.store.get_run(tenant, req.run_id)
            yield RunEvent(
                event="done",
                run_id=req.run_id,
                thread_id=final["thread_id"],
                result=views.run(final, await self.store.steps(tenant, req.run_id)),
            )
        finally:
            if not self.runs.nc.is_closed:
                await sub.unsubscribe()

    async def _new_steps(self, tenant: str, run_id: str, seen: dict[int, str]) -> list[RunEvent]:
        events = []
        for row in await self.store.steps(tenant, run_id):
            if seen.get(row["idx"]) != row["status"]:
                seen[row["idx"]] = row["status"]
                events.append(RunEvent(event="step", run_id=run_id, step=views.step(row)))
        return events

    # --- chat ------------------------------------------------------------------------

    async def chat(self, req: ChatRequest, ctx: Context) -> ChatResponse:
        return await self._chat(req, ctx)

    async def _chat(self, req: ChatRequest, ctx: Context, emit: Emit | None = None) -> ChatResponse:
        tenant = tenant_of(ctx)
        user = policy.user_of(ctx)
        agent_row = await self.store.get_agent(tenant, req.agent_id)
        if agent_row["status"] != "active":
            raise Conflict(f"agent {req.agent_id} is {agent_row['status']}; only active agents run")
        if req.thread_id:
            thread = await self.store.get_thread(tenant, req.thread_id)
            if thread["agent_id"] != req.agent_id or thread["user_id"] != user:
                raise NotFound(f"thread {req.thread_id} not found")
            # Only the newest messages can fit any window; older ones are not even counted.
            earlier = [
                {"role": m["role"], "content": m["content"]}
                for m in await self.store.messages(
                    tenant, thread["thread_id"], last=MAX_HISTORY_MESSAGES
                )
            ]
        else:
            thread = await self.store.create_thread(tenant, req.agent_id, user, req.message[:80])
            earlier = []
        kwargs: dict[str, Any] = {"emit": emit} if emit else {}
        result = await self.runs.start(
            agent_row,
            req.message,
            ctx,
            user=user,
            thread_id=thread["thread_id"],
            history_messages=earlier,
            stream=emit is not None,
            **kwargs,
        )
        run = await self.store.get_run(tenant, result.run_id)
        return ChatResponse(
            thread_id=thread["thread_id"],
            run_id=result.run_id,
            reply=result.output if result.status == "succeeded" else None,
            status=result.status,
            pending_approvals=result.pending_approvals,
            trimmed_messages=run["trimmed_messages"],
        )

    async def chat_stream(self, req: ChatRequest, ctx: Context) -> AsyncIterator[RunEvent]:
        async for event in _events(lambda emit: self._chat(req, ctx, emit)):
            yield event

    async def _thread(self, thread_id: str, agent_id: str | None, ctx: Context) -> Row:
        thread = await self.store.get_thread(tenant_of(ctx), thread_id)
        if (agent_id and thread["agent_id"] != agent_id) or not policy.may_see(
            ctx, thread["user_id"]
        ):
            raise NotFound(f"thread {thread_id} not found")
        return thread

    async def list_threads(self, req: ThreadListRequest, ctx: Context) -> ThreadList:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        rows, cursor = await self.store.list_threads(
            tenant,
            req.agent_id,
            None if policy.is_admin(ctx) else policy.user_of(ctx),
            req.cursor,
            req.limit,
        )
        return ThreadList(items=[views.thread(r) for r in rows], next_cursor=cursor)

    async def get_thread(self, req: ThreadGetRequest, ctx: Context) -> Thread:
        thread = await self._thread(req.thread_id, req.agent_id, ctx)
        return views.thread(thread, await self.store.messages(tenant_of(ctx), req.thread_id))

    async def delete_thread(self, req: ThreadDeleteRequest, ctx: Context) -> Deleted:
        await self._thread(req.thread_id, req.agent_id, ctx)
        return Deleted(deleted=await self.store.delete_thread(tenant_of(ctx), req.thread_id))

    # --- memory ----------------------------------------------------------------------

    async def add_memory(self, req: MemoryAddRequest, ctx: Context) -> MemoryItem:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        vector = (await self.remote.embed([req.text], ctx))[0]
        row = await self.store.insert_memory(
            tenant, req.agent_id, req.text, vector, req.metadata, "api", None
        )
        return views.memory(row)

    async def list_memories(self, req: MemoryListRequest, ctx: Context) -> MemoryList:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        rows, cursor = await self.store.list_memories(tenant, req.agent_id, req.cursor, req.limit)
        return MemoryList(items=[views.memory(r) for r in rows], next_cursor=cursor)

    async def search_memories(self, req: MemorySearchRequest, ctx: Context) -> MemoryList:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        vector = (await self.remote.embed([req.query], ctx))[0]
        rows = await self.store.search_memories(tenant, req.agent_id, vector, req.top_k)
        return MemoryList(items=[views.memory(r) for r in rows])

    async def delete_memory(self, req: MemoryDeleteRequest, ctx: Context) -> Deleted:
        tenant = tenant_of(ctx)
        await self.store.get_agent(tenant, req.agent_id)
        return Deleted(deleted=await self.store.delete_memory(tenant, req.agent_id, req.memory_id))


def _check_approval_list(
    approval_required: Sequence[str] | None, attached: Sequence[str] | None
) -> None:
    stray = sorted(set(approval_required or ()) - set(attached or ()))
    if stray:
        raise InvalidRequest(f"approval_required names tools not attached: {stray}")


def _implementation(row: Row) -> Any:
    from pydantic import TypeAdapter

    from schemas.agent import Implementation

    return TypeAdapter(Implementation).validate_python(row["implementation"])


def _builtin_view(kind: str) -> Tool:
    b = tools.BUILTINS[kind]
    return Tool(
        name=b.kind,
        description=b.description,
        parameters=b.parameters,
        builtin=True,
        required_roles=list(b.required_roles),
    )


async def _events(work: Callable[[Emit], Awaitable[Any]]) -> AsyncIterator[RunEvent]:
    """Run ``work`` with an emitter and yield what it emits, as it emits it.

    The work's own error (not found, forbidden, ...) is raised after the events it
    produced, so the caller gets the error contract instead of a task-group error.
    """
    queue: asyncio.Queue[RunEvent | None] = asyncio.Queue()
    failure: list[Exception] = []

    async def emit(event: RunEvent) -> None:
        queue.put_nowait(event)

    async def body() -> None:
        try:
            await work(emit)
        except Exception as exc:
            failure.append(exc)
        finally:
            queue.put_nowait(None)

    async with asyncio.TaskGroup() as group:
        group.create_task(body())
        while (event := await queue.get()) is not None:
            yield event
    if failure:
        raise failure[0]


def build_worker(
    service: AgentService, codec: Codec | None = None, max_concurrency: int = 64
) -> Worker:
    s = service
    return Worker(
        "agent",
        endpoints=[
            Endpoint(agent.CREATE, s.create),
            Endpoint(agent.GET, s.get),
            Endpoint(agent.LIST, s.list_agents),
            Endpoint(agent.UPDATE, s.update),
            Endpoint(agent.DELETE, s.delete),
            Endpoint(agent.EXECUTE, s.execute),
            Endpoint(agent.STREAM, s.stream),
            Endpoint(agent.GET_RUN, s.get_run),
            Endpoint(agent.LIST_RUNS, s.list_runs),
            Endpoint(agent.WATCH, s.watch),
            Endpoint(agent.APPROVE, s.approve),
            Endpoint(agent.REJECT, s.reject),
            Endpoint(agent.CANCEL, s.cancel),
            Endpoint(agent.CHAT, s.chat),
            Endpoint(agent.CHAT_STREAM, s.chat_stream),
            Endpoint(agent.LIST_THREADS, s.list_threads),
            Endpoint(agent.GET_THREAD, s.get_thread),
            Endpoint(agent.DELETE_THREAD, s.delete_thread),
            Endpoint(agent.ADD_MEMORY, s.add_memory),
            Endpoint(agent.LIST_MEMORIES, s.list_memories),
            Endpoint(agent.SEARCH_MEMORIES, s.search_memories),
            Endpoint(agent.DELETE_MEMORY, s.delete_memory),
            Endpoint(agent.LIST_TOOLS, s.list_tools),
            Endpoint(agent.GET_TOOL, s.get_tool),
            Endpoint(agent.CREATE_TOOL, s.create_tool),
            Endpoint(agent.UPDATE_TOOL, s.update_tool),
            Endpoint(agent.DELETE_TOOL, s.delete_tool),
            Endpoint(agent.GET_SETTINGS, s.get_settings),
            Endpoint(agent.UPDATE_SETTINGS, s.update_settings),
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
    if not env.settings.database_url:
        raise RuntimeError("DATABASE_URL is not set")
    config = config or AgentConfig()
    codec = Codec(env.settings.codec_type)
    db = await create_database(env.settings.database_url, max_size=DB_POOL_SIZE)
    try:
        await prepare(db)
        store = Store(db)
        remote = Remote(env.client, config)
        runs = Runs(store, remote, config, fetcher or netguard.SafeFetcher(), env.nc, env.js, codec)
        worker = build_worker(
            AgentService(store, runs, remote, codec), codec, env.settings.max_concurrency
        )
        if not config.run_consumer:
            yield worker
            return
        stop = asyncio.Event()
        consumer = JobConsumer(
            env.js, RUNS_CONSUMER, RunJob, runs.run_job, on_failed=runs.job_failed, codec=codec
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(consumer.run(stop))
            try:
                yield worker
            finally:
                stop.set()
    finally:
        await db.close()


@asynccontextmanager
async def lifespan(env: WorkerEnv) -> AsyncIterator[Worker]:
    # The schema pool stops after the worker and its run consumer have stopped.
    async with offload.using(env.settings), serving_parts(env) as worker:
        yield worker
