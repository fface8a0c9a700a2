"""The worker runtime: a service on ``nats.micro`` whose endpoints run concurrently.

A worker is a name and a list of :class:`Endpoint`. For each message the runtime
decodes the envelope, checks tenant and deadline, validates the request model, runs
the handler inside the deadline, and answers — every failure goes through the one
``except`` in :meth:`Worker._handle` and becomes the error contract (DESIGN §4).

nats-py runs one subscription's callbacks one after another, so the callback only
takes a concurrency slot and starts the handler in the worker's task group: a slow
handler never holds up the requests behind it, and a full worker stops reading
(back-pressure) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.micro import add_service
from nats.micro.request import Request
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel, ValidationError

from bus.client import Client
from bus.codec import Codec
from bus.context import now_ms
from bus.errors import InvalidRequest, MeshError, Timeout, Unauthenticated, translate
from bus.settings import DEFAULT_MAX_CONCURRENCY, Settings
from bus.types import ERROR_CODE_HEADER, ERROR_HEADER
from schemas.context import Context

_log = structlog.get_logger("bus.worker")
_tracer = trace.get_tracer("bus.worker")

#: How long stopping waits for in-flight handlers before cancelling them.
DEFAULT_DRAIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Endpoint:
    """One operation of a service, answered on ``<service>.<operation>.request``."""

    operation: str
    handler: Any  # bus.types.Handler or StreamHandler
    request: type[BaseModel]
    idempotent: bool = True
    streaming: bool = False
    description: str = ""


def subject_for(service: str, operation: str) -> str:
    return f"{service}.{operation}.request"


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Field errors without the offending input (which may be huge or sensitive)."""
    return [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


@dataclass
class Worker:
    name: str
    endpoints: list[Endpoint]
    version: str = "0.1.0"
    description: str = ""
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    codec: Codec = field(default_factory=Codec)
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S

    @asynccontextmanager
    async def serve(self, nc: NATS) -> AsyncIterator[Any]:
        """Register the service and its endpoints; on exit, drain and finish in-flight work."""
        slots = asyncio.Semaphore(self.max_concurrency)
        service = await add_service(
            nc,
            name=self.name,
            version=self.version,
            description=self.description,
            queue_group=self.name,
        )
        async with asyncio.TaskGroup() as tasks:
            for ep in self.endpoints:
                await service.add_endpoint(
                    name=ep.operation,
                    subject=subject_for(self.name, ep.operation),
                    handler=self._dispatcher(ep, slots, tasks, service),
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
                await self._stop(service, slots)

    async def _stop(self, service: Any, slots: asyncio.Semaphore) -> None:
        # Drain (not just unsubscribe) so messages already delivered are still answered.
        for mep in service._endpoints:
            sub = mep._subscription
            if sub is not None and not service._client.is_closed:
                await sub.drain()
        # Every slot back means no handler is in flight.
        try:
            async with asyncio.timeout(self.drain_timeout):
                for _ in range(self.max_concurrency):
                    await slots.acquire()
        except TimeoutError:
            _log.warning("drain_timeout", service=self.name)
            raise
        finally:
            service._endpoints = []  # subscriptions are gone; let stop() handle the rest
            if not service._client.is_closed:
                await service.stop()
            _log.info("worker_stopped", service=self.name)

    def _dispatcher(
        self, ep: Endpoint, slots: asyncio.Semaphore, tasks: asyncio.TaskGroup, service: Any
    ) -> Any:
        subject = subject_for(self.name, ep.operation)
        stats: list[Any] = []  # the nats.micro Endpoint, found on first use

        async def dispatch(req: Request) -> None:
            await slots.acquire()
            if not stats:
                stats.extend(m for m in service._endpoints if m._subject == subject)
            tasks.create_task(self._handle(ep, subject, req, slots, stats[0] if stats else None))

        return dispatch

    async def _handle(
        self, ep: Endpoint, subject: str, req: Request, slots: asyncio.Semaphore, stats: Any
    ) -> None:
        started = time.perf_counter()
        ctx: Context | None = None
        code = "ok"
        try:
            try:
                headers, data = self.codec.decode(req.data)
                ctx = _context(headers)
                await self._traced(ep, subject, req, ctx, data)
            except Exception as exc:
                error = _as_mesh_error(exc, subject)
                code = error.code
                if stats is not None:
                    stats._num_errors += 1
                    stats._last_error = f"{error.code}: {error.message}"
                await self._respond_error(req, ctx, error)
            # A log line per request; below its level it costs a level check only.
            _log.debug(
                "request",
                subject=subject,
                tenant=ctx.tenant if ctx else None,
                correlation_id=ctx.correlation_id if ctx else None,
                code=code,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )
        except Exception:  # the reply itself failed (connection gone): log, never crash
            _log.exception("reply_failed", subject=subject)
        finally:
            if stats is not None:
                # nats.micro timed only the hand-off; count the real handling time.
                stats._processing_time += int((time.perf_counter() - started) * 1e9)
                stats._average_processing_time = stats._processing_time // max(
                    1, stats._num_requests
                )
            slots.release()

    async def _traced(
        self, ep: Endpoint, subject: str, req: Request, ctx: Context, data: Any
    ) -> None:
        parent = None
        if ctx.traceparent:
            carrier = {"traceparent": ctx.traceparent, "tracestate": ctx.tracestate or ""}
            parent = propagate.extract(carrier)
        with (
            _tracer.start_as_current_span(subject, context=parent, kind=SpanKind.SERVER) as span,
            structlog.contextvars.bound_contextvars(
                tenant=ctx.tenant, correlation_id=ctx.correlation_id
            ),
        ):
            if ctx.tenant:
                span.set_attribute("mesh.tenant", ctx.tenant)
            try:
                await self._run(ep, req, ctx, data)
            except Exception as exc:
                error = _as_mesh_error(exc, subject)
                span.set_status(Status(StatusCode.ERROR, error.code))
                raise error from exc

    async def _run(self, ep: Endpoint, req: Request, ctx: Context, data: Any) -> None:
        if not ctx.tenant:
            raise Unauthenticated("request carries no tenant")
        budget = None
        if ctx.deadline is not None:
            budget = (ctx.deadline - now_ms()) / 1000.0
            if budget <= 0:
                raise Timeout("deadline passed before the request started")
        try:
            request = ep.request.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequest(
                f"invalid {ep.operation} request", validation_details(exc)
            ) from None
        reply_h = _reply_headers(ctx)
        try:
            async with asyncio.timeout(budget):
                if ep.streaming:
                    chunk_h = {**reply_h, "stream": "chunk"}
                    async for chunk in ep.handler(request, ctx):
                        await _reply(req, self.codec.encode(chunk_h, chunk.model_dump()))
                    await _reply(req, self.codec.encode({**reply_h, "stream": "end"}, None))
                else:
                    result = await ep.handler(request, ctx)
                    await _reply(req, self.codec.encode(reply_h, result.model_dump()))
        except TimeoutError:
            raise Timeout("deadline exceeded") from None

    async def _respond_error(self, req: Request, ctx: Context | None, error: MeshError) -> None:
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
    else:
        _log.warning("dependency_failed", subject=subject, error=type(exc).__name__)
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
