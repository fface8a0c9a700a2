"""The worker runtime: a service on ``nats.micro`` whose endpoints run concurrently.

A worker is a name and a list of :class:`Endpoint`. For each message the runtime
decodes the envelope, checks tenant and deadline, validates the request model, runs
the handler inside the deadline, and answers — every failure goes through the one
``except`` in :meth:`_Serving.handle` and becomes the error contract
(docs/architecture.md, "Errors").

nats-py runs one subscription's callbacks one after another, so the callback only
takes a concurrency slot and starts the handler in the worker's task group: a slow
handler never holds up the requests behind it, and a full worker stops reading
(back-pressure) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, overload

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointStats
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel, ValidationError

from bus.client import Client
from bus.codec import Codec
from bus.context import now_ms
from bus.errors import (
    InvalidRequest,
    MeshError,
    RetryableError,
    Timeout,
    Unauthenticated,
    translate,
)
from bus.settings import DEFAULT_MAX_CONCURRENCY, Settings
from bus.telemetry import remote_parent, tracing_enabled
from bus.types import CANCEL_SUFFIX, ERROR_CODE_HEADER, ERROR_HEADER, Handler, StreamHandler
from schemas.context import Context
from schemas.operations import Operation, Req, Resp

_log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("bus.worker")

#: How long stopping waits for in-flight handlers before cancelling them.
DEFAULT_DRAIN_TIMEOUT_S = 10.0
#: How often handlers past their deadline are cancelled (the deadline's resolution).
REAP_INTERVAL_S = 0.025


class Endpoint(Generic[Req, Resp]):
    """One operation of a service and the handler that answers it.

    ``Endpoint(cache.GET, handlers.get)``: the subject, models and metadata come from the
    :class:`~schemas.operations.Operation`; mypy checks that the handler takes its request
    model and returns (or, for a streaming operation, yields) its response model.
    """

    __slots__ = ("op", "handler")

    @overload
    def __init__(self, op: Operation[Req, Resp], handler: Handler[Req, Resp]) -> None: ...

    @overload
    def __init__(self, op: Operation[Req, Resp], handler: StreamHandler[Req, Resp]) -> None: ...

    def __init__(self, op: Operation[Req, Resp], handler: Any) -> None:
        if op.streaming != inspect.isasyncgenfunction(handler):
            kind = "an async generator" if op.streaming else "a coroutine function"
            raise TypeError(f"{op.subject}: the handler must be {kind}")
        self.op = op
        self.handler = handler

    @property
    def operation(self) -> str:
        return self.op.name

    @property
    def request(self) -> type[Req]:
        return self.op.request

    @property
    def idempotent(self) -> bool:
        return self.op.idempotent

    @property
    def streaming(self) -> bool:
        return self.op.streaming

    @property
    def description(self) -> str:
        return self.op.description


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Field errors without the offending input (which may be huge or sensitive)."""
    return [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


@dataclass
class EndpointCounters:
    """What one endpoint answered, counted by the runtime: nats.micro's own counters see
    only the hand-off to the handler's task, not the handling or its errors."""

    requests: int = 0
    errors: int = 0
    processing_ns: int = 0
    last_error: str | None = None

    def report(self, stats: EndpointStats) -> None:
        """Fill a ``$SRV.STATS`` entry (a fresh object nats.micro builds per answer)."""
        stats.num_requests = self.requests
        stats.num_errors = self.errors
        stats.processing_time = self.processing_ns
        stats.average_processing_time = self.processing_ns // max(1, self.requests)
        stats.last_error = self.last_error


def _stats_hook(counters: dict[str, EndpointCounters]) -> Any:
    """nats.micro's public ``stats_handler``: our counters into each endpoint's entry."""

    def fill(stats: EndpointStats) -> None:
        counted = counters.get(stats.subject)
        if counted is not None:
            counted.report(stats)
        return None  # no extra ``data``

    return fill


@dataclass
class Worker:
    name: str
    endpoints: list[Endpoint]
    version: str = "0.1.0"
    description: str = ""
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    codec: Codec = field(default_factory=Codec)
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S

    def __post_init__(self) -> None:
        for ep in self.endpoints:
            if ep.op.service != self.name:
                raise ValueError(f"worker {self.name!r} cannot serve {ep.op.subject}")

    @asynccontextmanager
    async def serve(self, nc: NATS) -> AsyncIterator[Any]:
        """Register the service and its endpoints; on exit, drain and finish in-flight work."""
        counters = {ep.op.subject: EndpointCounters() for ep in self.endpoints}
        service = await add_service(
            nc,
            name=self.name,
            version=self.version,
            description=self.description,
            queue_group=self.name,
            stats_handler=_stats_hook(counters),
        )
        async with asyncio.TaskGroup() as tasks:
            run = _Serving(self, service, tasks, counters)
            reaper = tasks.create_task(run.reap())
            for ep in self.endpoints:
                await service.add_endpoint(
                    name=ep.operation,
                    subject=ep.op.subject,
                    handler=run.dispatcher(ep),
                    metadata={
                        "idempotent": str(ep.idempotent).lower(),
                        "streaming": str(ep.streaming).lower(),
                        "description": ep.description,
                    },
                )
            _log.info("worker_started", service=self.name, endpoints=len(self.endpoints))
            try:
                yield service
            finally:
                try:
                    await run.stop()
                finally:
                    reaper.cancel()


class _Serving:
    """One ``serve()`` of a worker: its concurrency slots, task group and deadlines."""

    def __init__(
        self,
        worker: Worker,
        service: Any,
        tasks: asyncio.TaskGroup,
        counters: dict[str, EndpointCounters],
    ) -> None:
        self.worker = worker
        self.counters = counters
        self.codec = worker.codec
        self.service = service
        self.tasks = tasks
        self.slots = asyncio.Semaphore(worker.max_concurrency)
        self.loop = asyncio.get_running_loop()
        # Read once: both checks cost more than a no-op handler when done per message.
        self.tracing = tracing_enabled()
        self.debug = _log.is_enabled_for(logging.DEBUG)
        self.deadlines: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()

    async def reap(self) -> None:
        """Cancel handlers past their deadline.

        One sweep for all requests instead of a timer per request: a timer handle per
        message (asyncio.timeout, call_later) costs a heap push and a cancelled entry,
        which showed as the largest item in the runtime's per-request profile.
        """
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            now = self.loop.time()
            for task, deadline in list(self.deadlines.items()):
                if deadline <= now and task not in self.expired:
                    self.expired.add(task)
                    task.cancel()

    async def stop(self) -> None:
        service = self.service
        # Drain (not just unsubscribe) so messages already delivered are still answered.
        for mep in service._endpoints:
            sub = mep._subscription
            if sub is not None and not service._client.is_closed:
                await sub.drain()
        # Every slot back means no handler is in flight.
        try:
            async with asyncio.timeout(self.worker.drain_timeout):
                for _ in range(self.worker.max_concurrency):
                    await self.slots.acquire()
        except TimeoutError:
            _log.warning("drain_timeout", service=self.worker.name)
            raise
        finally:
            service._endpoints = []  # subscriptions are gone; let stop() handle the rest
            if not service._client.is_closed:
                await service.stop()
            _log.info("worker_stopped", service=self.worker.name)

    def dispatcher(self, ep: Endpoint[Any, Any]) -> Any:
        subject = ep.op.subject
        counted = self.counters[subject]

        async def dispatch(req: Request) -> None:
            await self.slots.acquire()
            self.tasks.create_task(self.handle(ep, subject, req, counted))

        return dispatch

    async def handle(
        self, ep: Endpoint[Any, Any], subject: str, req: Request, counted: EndpointCounters
    ) -> None:
        started = time.perf_counter()
        ctx: Context | None = None
        code = "ok"
        try:
            try:
                headers, data = self.codec.decode(req.data)
                ctx = _context(headers)
                # This task runs only this request, so binding needs no reset.
                structlog.contextvars.bind_contextvars(
                    tenant=ctx.tenant, correlation_id=ctx.correlation_id
                )
                if self.tracing:
                    await self.traced(ep, subject, req, ctx, data)
                else:
                    await self.run(ep, req, ctx, data)
            except Exception as exc:
                error = _as_mesh_error(exc, subject)
                code = error.code
                counted.errors += 1
                counted.last_error = f"{error.code}: {error.message}"
                await self.respond_error(req, ctx, error)
            if self.debug:  # the per-request log line
                ms = round((time.perf_counter() - started) * 1000, 2)
                _log.debug("request", subject=subject, code=code, ms=ms)
        except Exception:  # the reply itself failed (connection gone): log, never crash
            _log.exception("reply_failed", subject=subject)
        finally:
            counted.requests += 1
            counted.processing_ns += int((time.perf_counter() - started) * 1e9)
            self.slots.release()

    async def traced(
        self, ep: Endpoint[Any, Any], subject: str, req: Request, ctx: Context, data: Any
    ) -> None:
        with _tracer.start_as_current_span(
            subject, context=remote_parent(ctx.traceparent), kind=SpanKind.SERVER
        ) as span:
            if ctx.tenant:
                span.set_attribute("mesh.tenant", ctx.tenant)
            try:
                await self.run(ep, req, ctx, data)
            except Exception as exc:
                error = _as_mesh_error(exc, subject)
                span.set_status(Status(StatusCode.ERROR, error.code))
                raise error from exc

    async def run(self, ep: Endpoint[Any, Any], req: Request, ctx: Context, data: Any) -> None:
        if not ctx.tenant:
            raise Unauthenticated("request carries no tenant")
        try:
            request = ep.request.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequest(
                f"invalid {ep.operation} request", validation_details(exc)
            ) from None
        if ctx.deadline is None:
            await self.call(ep, req, ctx, request)
            return
        budget = (ctx.deadline - now_ms()) / 1000.0
        if budget <= 0:
            raise Timeout("deadline passed before the request started")
        task = asyncio.current_task()
        assert task is not None
        self.deadlines[task] = self.loop.time() + budget
        try:
            await self.call(ep, req, ctx, request)
        except asyncio.CancelledError:
            if task not in self.expired:
                raise
            task.uncancel()
            raise Timeout("deadline exceeded") from None
        finally:
            del self.deadlines[task]
            self.expired.discard(task)

    async def call(
        self, ep: Endpoint[Any, Any], req: Request, ctx: Context, request: BaseModel
    ) -> None:
        reply_h = _reply_headers(ctx)
        if not ep.streaming:
            result = await ep.handler(request, ctx)
            await _reply(req, self.codec.encode_reply(reply_h, result.model_dump()))
            return
        await self.stream(ep, req, ctx, request, reply_h)

    async def stream(
        self,
        ep: Endpoint[Any, Any],
        req: Request,
        ctx: Context,
        request: BaseModel,
        reply_h: dict[str, Any],
    ) -> None:
        """Publish each chunk, then ``end``; stop early when the caller cancels the stream.

        The caller's client publishes to ``<reply subject>.cancel`` when it stops reading
        (an HTTP client went away), so a long generation does not run on for nobody.
        """
        task = asyncio.current_task()
        assert task is not None
        cancelled = False

        async def on_cancel(_msg: Any) -> None:
            nonlocal cancelled
            cancelled = True
            task.cancel()

        reply = req._msg.reply
        cancel_sub = (
            await self.service._client.subscribe(reply + CANCEL_SUFFIX, cb=on_cancel)
            if reply
            else None
        )
        chunk_h = {**reply_h, "stream": "chunk"}
        try:
            async for chunk in ep.handler(request, ctx):
                await _reply(req, self.codec.encode_reply(chunk_h, chunk.model_dump()))
            await _reply(req, self.codec.encode({**reply_h, "stream": "end"}, None))
        except asyncio.CancelledError:
            if not cancelled:
                raise
            task.uncancel()
            _log.info("stream_cancelled_by_caller", subject=req.subject)
        finally:
            if cancel_sub is not None and not self.service._client.is_closed:
                await cancel_sub.unsubscribe()

    async def respond_error(self, req: Request, ctx: Context | None, error: MeshError) -> None:
        if not req._msg.reply:
            return
        h = _reply_headers(ctx) if ctx else {}
        body = self.codec.encode(h, {"error": error.body().model_dump()})
        # NATS headers carry only ASCII: keep the message printable and short.
        message = error.message.encode("ascii", "replace").decode()[:200]
        await req.respond(
            body, headers={ERROR_HEADER: message, ERROR_CODE_HEADER: str(error.status)}
        )


def _as_mesh_error(exc: Exception, subject: str) -> MeshError:
    """Translate once, logging what is not the caller's fault (with the trace)."""
    if isinstance(exc, MeshError):
        return exc
    error = translate(exc)
    if error.code == "internal":
        _log.exception("handler_failed", subject=subject)
    elif isinstance(error, RetryableError):
        _log.warning("dependency_failed", subject=subject, error=type(exc).__name__)
    else:
        _log.info("input_rejected", subject=subject, error=type(exc).__name__)
    return error


def _context(headers: dict[str, Any]) -> Context:
    try:
        return Context.model_validate(headers)
    except ValidationError as exc:
        raise InvalidRequest("invalid context headers", validation_details(exc)) from None


def _reply_headers(ctx: Context) -> dict[str, Any]:
    h: dict[str, Any] = {}
    if ctx.correlation_id:
        h["correlation_id"] = ctx.correlation_id
    if ctx.request_id:
        h["request_id"] = ctx.request_id
    return h


async def _reply(req: Request, body: bytes) -> None:
    if req._msg.reply:  # a plain publish expects no answer
        await req.respond(body)


@dataclass(frozen=True)
class WorkerEnv:
    """What the composition root hands a worker's ``lifespan``: settings and the bus."""

    settings: Settings
    nc: NATS
    client: Client
    js: JetStreamContext
