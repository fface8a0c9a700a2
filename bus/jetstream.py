"""JetStream streams, deduplicated publishing, and durable job consumers
(docs/architecture.md, "JetStream").

Stream and consumer definitions live here, in one place, and are created idempotently
at start. A job that exhausts its deliveries is reported to ``on_failed`` with its last
error before it is removed — never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from bus.codec import Codec
from bus.errors import InvalidRequest, MeshError, RetryableError, Unavailable, translate
from bus.worker import validation_details
from schemas.context import Context

_log = structlog.get_logger(__name__)

DAY_S = 24 * 3600.0
DUPLICATE_WINDOW_S = 120.0
UPLOADS_BUCKET = "uploads"
#: KV bucket of LLMOps budget states (schemas.llmops.BUDGETS_BUCKET); the gateway watches it.
LLMOPS_BUDGETS_BUCKET = "LLMOPS_BUDGETS"
#: Envelope header of a job republished because reporting its failure failed.
FAILED_KEY = "job_failed"
#: Most bytes the ``uploads`` bucket holds, all tenants together (``UPLOADS_BUCKET_MAX_BYTES``):
#: past it JetStream refuses new objects (discard "new") instead of filling the disk. A
#: stream's ``max_bytes`` is reserved against the server's ``max_file_store`` (8 GB in
#: nats.conf), together with LLMOPS' and EVENTS' 1 GiB each.
DEFAULT_UPLOADS_BUCKET_MAX_BYTES = 4 * 1024**3

STREAMS: tuple[api.StreamConfig, ...] = (
    api.StreamConfig(
        name="INGEST",
        subjects=["ingest.jobs.>"],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        description="document ingestion jobs",
    ),
    api.StreamConfig(
        name="LLMOPS",
        subjects=["events.llmops.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=30 * DAY_S,
        max_bytes=1024**3,
        duplicate_window=DUPLICATE_WINDOW_S,
        description="one event per LLM call",
    ),
    api.StreamConfig(
        name="EVENTS",
        subjects=["events.domain.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=7 * DAY_S,
        max_bytes=1024**3,
        duplicate_window=DUPLICATE_WINDOW_S,
        description="domain events",
    ),
    # Agent runs queued with `background: true` (workers/agent): one small job per run.
    api.StreamConfig(
        name="AGENT_RUNS",
        subjects=["agent.runs.>"],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        max_age=DAY_S,
        max_bytes=64 * 1024**2,
        duplicate_window=DUPLICATE_WINDOW_S,
        description="queued agent runs",
    ),
    # ML training jobs (workers/ml): one small message per job, Nats-Msg-Id = job id.
    api.StreamConfig(
        name="ML",
        subjects=["ml.jobs.>"],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        max_age=7 * DAY_S,
        max_bytes=64 * 1024**2,
        duplicate_window=DUPLICATE_WINDOW_S,
        description="ML training jobs",
    ),
)


async def ensure_streams(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    uploads_max_bytes: int = DEFAULT_UPLOADS_BUCKET_MAX_BYTES,
) -> None:
    """Create every stream and the ``uploads`` bucket, or bring existing ones to this
    definition.

    ``replicas`` is 3 on a 3-node cluster (docs/deploy.md): every stream and bucket then
    survives the loss of one node. ``uploads_max_bytes`` bounds the bucket.
    """
    for config in STREAMS:
        config = dataclasses.replace(config, num_replicas=replicas)
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)  # exists with other settings
    try:
        await js.object_store(UPLOADS_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        await js.create_object_store(
            UPLOADS_BUCKET,
            storage=api.StorageType.FILE,
            replicas=replicas,
            max_bytes=uploads_max_bytes,
        )
    else:
        info = await js.stream_info(f"OBJ_{UPLOADS_BUCKET}")
        # A bucket made before the limit existed, or with other replicas.
        if info.config.num_replicas != replicas or info.config.max_bytes != uploads_max_bytes:
            await js.update_stream(
                dataclasses.replace(info.config, num_replicas=replicas, max_bytes=uploads_max_bytes)
            )
    await budgets_bucket(js, replicas=replicas)


async def budgets_bucket(js: JetStreamContext, *, replicas: int | None = None) -> KeyValue:
    """The ``LLMOPS_BUDGETS`` KV bucket (one value per key kept), created if missing;
    ``replicas`` given (at start, by :func:`ensure_streams`) also brings it to that."""
    try:
        kv = await js.key_value(LLMOPS_BUDGETS_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(
                api.KeyValueConfig(
                    bucket=LLMOPS_BUDGETS_BUCKET,
                    history=1,
                    storage=api.StorageType.FILE,
                    replicas=replicas or 1,
                    description="LLMOps budget states, watched by the gateway",
                )
            )
        except nats.js.errors.BadRequestError:  # created meanwhile by another process
            return await js.key_value(LLMOPS_BUDGETS_BUCKET)
    if replicas is not None:
        info = await js.stream_info(f"KV_{LLMOPS_BUDGETS_BUCKET}")
        if info.config.num_replicas != replicas:
            await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
    return kv


async def publish(
    js: JetStreamContext,
    subject: str,
    payload: BaseModel | dict[str, Any],
    ctx: Context,
    *,
    msg_id: str,
    codec: Codec | None = None,
    timeout: float = 5.0,
) -> api.PubAck:
    """Publish once: a retry with the same ``msg_id`` inside the window is deduplicated."""
    data = payload.model_dump() if isinstance(payload, BaseModel) else payload
    body = (codec or Codec()).encode(ctx.headers(), data)
    try:
        return await js.publish(subject, body, timeout=timeout, headers={"Nats-Msg-Id": msg_id})
    except (
        nats.errors.TimeoutError,
        nats.errors.NoRespondersError,
        nats.errors.ConnectionClosedError,
        nats.js.errors.ServiceUnavailableError,
        # 503 from JetStream: the stream has no leader for a moment (a node was lost)
        nats.js.errors.NoStreamResponseError,
    ) as exc:
        raise Unavailable(f"JetStream publish failed: {type(exc).__name__}") from None


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer; retries are naks delayed by ``backoff`` (seconds)."""

    stream: str
    durable: str
    filter_subject: str
    max_deliver: int = 5
    backoff: tuple[float, ...] = (1.0, 5.0, 15.0, 30.0)
    ack_wait: float = 30.0
    batch: int = 8

    def delay(self, delivered: int) -> float:
        return self.backoff[min(delivered - 1, len(self.backoff) - 1)]


#: Called when a job will not be retried: (payload or None, context or None, reason).
FailedHandler = Callable[[Any, Context | None, str], Awaitable[None]]


class JobConsumer:
    """Pulls jobs, runs ``handler(model, ctx)`` per message, acks on success.

    Non-retryable errors (bad input, not found, ...) terminate the message at once;
    other failures are nak'ed with backoff until ``max_deliver``; either way the job
    is handed to ``on_failed`` with its reason first. While a job runs the consumer
    reports progress so a long job is not redelivered under it.
    """

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        model: type[BaseModel],
        handler: Callable[[Any, Context], Awaitable[None]],
        *,
        on_failed: FailedHandler,
        codec: Codec | None = None,
    ) -> None:
        self.js = js
        self.spec = spec
        self.model = model
        self.handler = handler
        self.on_failed = on_failed
        self.codec = codec or Codec()

    async def ensure(self) -> None:
        s = self.spec
        await self.js.add_consumer(
            s.stream,
            api.ConsumerConfig(
                durable_name=s.durable,
                filter_subject=s.filter_subject,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                max_deliver=s.max_deliver,
                ack_wait=s.ack_wait,
                max_ack_pending=max(s.batch * 4, 64),
            ),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until ``stop`` is set; in-flight jobs finish first.

        Up to ``batch`` jobs run at once, and a free slot is refilled at once: one slow
        job (a large document) never holds back the jobs fetched with it.
        """
        await self.ensure()
        sub = await self.js.pull_subscribe_bind(durable=self.spec.durable, stream=self.spec.stream)
        slots = asyncio.Semaphore(self.spec.batch)

        async def one(msg: Msg) -> None:
            try:
                await self._guarded(msg)
            finally:
                slots.release()

        try:
            async with asyncio.TaskGroup() as tg:
                while not stop.is_set():
                    await slots.acquire()
                    free = 1
                    while free < self.spec.batch and not slots.locked():
                        await slots.acquire()
                        free += 1
                    if stop.is_set():
                        for _ in range(free):
                            slots.release()
                        break
                    try:
                        msgs = await sub.fetch(free, timeout=1.0)
                    except TimeoutError:
                        # nats.errors.TimeoutError, and the plain asyncio.TimeoutError that
                        # nats-py's fetch raises when its first probe used the whole timeout.
                        msgs = []
                    except (
                        nats.errors.ConnectionClosedError,
                        nats.errors.ConnectionReconnectingError,
                        nats.js.errors.ServiceUnavailableError,
                    ) as exc:
                        _log.warning("consumer_fetch_failed", error=type(exc).__name__)
                        msgs = []
                        await asyncio.sleep(1.0)
                    for _ in range(free - len(msgs)):
                        slots.release()
                    for msg in msgs:
                        tg.create_task(one(msg))
        finally:
            if not self.js._nc.is_closed:
                await sub.unsubscribe()

    async def _guarded(self, msg: Msg) -> None:
        try:
            await self._process(msg)
        except Exception:  # ack/nak/term failed: JetStream redelivers after ack_wait
            _log.exception("job_ack_failed", subject=msg.subject)

    async def _process(self, msg: Msg) -> None:
        delivered = msg.metadata.num_delivered
        payload: Any = None
        ctx: Context | None = None
        headers: dict[str, Any] = {}
        data: Any = None
        try:
            headers, data = self.codec.decode(msg.data)
            ctx = Context.model_validate(headers)
            try:
                payload = self.model.model_validate(data)
            except ValidationError as exc:
                raise InvalidRequest("invalid job", validation_details(exc)) from None
            recorded = headers.get(FAILED_KEY)
            if isinstance(recorded, str):
                # A job that already failed, republished because reporting it failed.
                await self._report(msg, payload, ctx, recorded, delivered, headers, data)
                return
            with structlog.contextvars.bound_contextvars(
                tenant=ctx.tenant, correlation_id=ctx.correlation_id
            ):
                await self._with_progress(msg, self.handler(payload, ctx))
            await msg.ack()
        except Exception as exc:
            error = (
                translate(exc)
                if not isinstance(exc, ValidationError)
                else InvalidRequest("invalid job context")
            )
            if isinstance(error, RetryableError) or not isinstance(exc, MeshError):
                if delivered < self.spec.max_deliver:
                    _log.warning(
                        "job_retry", subject=msg.subject, delivered=delivered, error=error.message
                    )
                    await msg.nak(delay=self.spec.delay(delivered))
                    return
            reason = f"{error.code}: {error.message}"
            if error.code == "internal" and not isinstance(exc, MeshError):
                _log.error("job_failed_internal", subject=msg.subject, exc_info=exc)
            _log.warning("job_failed", subject=msg.subject, delivered=delivered, reason=reason)
            await self._report(msg, payload, ctx, reason, delivered, headers, data)

    async def _report(
        self,
        msg: Msg,
        payload: Any,
        ctx: Context | None,
        reason: str,
        delivered: int,
        headers: dict[str, Any],
        data: Any,
    ) -> None:
        """Hand a failed job to ``on_failed``, then drop the message.

        If ``on_failed`` fails (its database is down), the message is nak'ed to try again
        later; on its last delivery a nak would let JetStream drop it unreported, so it
        is republished instead, marked as failed (only the report is retried, never the
        work) and with a fresh delivery count.
        """
        try:
            await self.on_failed(payload, ctx, reason)
        except Exception:
            _log.exception("job_failed_report_failed", subject=msg.subject)
            if delivered < self.spec.max_deliver or ctx is None or data is None:
                await msg.nak(delay=self.spec.delay(delivered))
                return
            body = self.codec.encode({**headers, FAILED_KEY: reason}, data)
            seq = msg.metadata.sequence.stream
            try:
                await self.js.publish(
                    msg.subject, body, timeout=5.0, headers={"Nats-Msg-Id": f"{seq}:failed"}
                )
            except Exception as exc:
                _log.error("job_failed_requeue_failed", subject=msg.subject, error=repr(exc))
                await msg.nak(delay=self.spec.delay(delivered))
                return
        await msg.term()

    async def _with_progress(self, msg: Msg, work: Awaitable[None]) -> None:
        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self.spec.ack_wait / 3)
                try:
                    await msg.in_progress()
                except Exception as exc:  # connection trouble: redelivery is the fallback
                    _log.warning("job_progress_failed", error=type(exc).__name__)

        # Not a TaskGroup: it would wrap the job's own error in an ExceptionGroup.
        beat = asyncio.create_task(heartbeat())
        try:
            await work
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat


#: The LLMOps worker's durable consumer of operation events (batched: bus/batches.py).
#: Unlimited deliveries: an event is redelivered until stored, never dropped.
LLMOPS_CONSUMER = ConsumerSpec(
    stream="LLMOPS",
    durable="llmops",
    filter_subject="events.llmops.operation",
    max_deliver=-1,
    backoff=(1.0, 2.0, 5.0, 10.0, 30.0),
    ack_wait=6.0,  # a killed consumer's batch comes back this soon; live ones send progress
    batch=500,
)
