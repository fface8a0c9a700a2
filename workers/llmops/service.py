"""LLMOps Service: ``llmops.{log,query,metrics,cost,set_budget,get_budgets}.request``, the
durable consumer of ``events.llmops.operation``, retention and the alert outbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from bus import jetstream
from bus.batches import BatchConsumer, Delivery
from bus.codec import Codec, Limits
from bus.errors import InvalidRequest, RetryableError, translate
from bus.lifespan import background, database
from bus.sql import tenant_of
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import llmops
from schemas.context import Context
from schemas.llmops import (
    Budget,
    CostRequest,
    CostResponse,
    GetBudgetsRequest,
    GetBudgetsResponse,
    LogRequest,
    LogResponse,
    MetricsRequest,
    MetricsResponse,
    QueryRequest,
    QueryResponse,
    SetBudgetRequest,
)
from workers.llmops.budgets import Budgets
from workers.llmops.events import OperationEvent, Row, event_of
from workers.llmops.queries import Reader
from workers.llmops.store import SCHEMA, Store

_log = structlog.get_logger(__name__)

VERSION = "0.1.0"
#: An ``llmops.log`` operation may start at most this far in the future (clock skew).
MAX_FUTURE = timedelta(minutes=5)
#: How often retention and the alert outbox run.
HOUSEKEEPING_S = 600.0
#: Batches in hand at once per worker process: while one batch's transaction runs in
#: Postgres, the next is fetched from JetStream, decoded and validated here, so the two
#: processes work side by side (docs/services/llmops.md, "Ingest"). Rollup rows are
#: upserted in sorted key order, so concurrent batches wait on each other's row locks but
#: never deadlock; ``llmops.seen`` keeps a redelivered event stored once either way.
CONSUMERS = 2
#: Room left in a reply for the envelope's headers next to a metrics answer.
REPLY_ENVELOPE_BYTES = 64 * 1024


class LLMOps:
    def __init__(
        self,
        store: Store,
        reader: Reader,
        budgets: Budgets,
        js: JetStreamContext,
        *,
        retention_days: int,
        codec: Codec | None = None,
    ) -> None:
        self.store = store
        self.reader = reader
        self.budgets = budgets
        self.js = js
        self.retention_days = retention_days
        self.codec = codec or Codec()

    def _oldest(self) -> datetime:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=self.retention_days)

    # ------------------------------------------------------------ endpoints

    async def log(self, req: LogRequest, ctx: Context) -> LogResponse:
        tenant = tenant_of(ctx)
        oldest, newest = self._oldest(), datetime.now(UTC) + MAX_FUTURE
        for i, op in enumerate(req.operations):
            if not oldest <= op.ts <= newest:
                raise InvalidRequest(
                    f"operations[{i}].ts is outside the stored window "
                    f"({oldest.isoformat()} .. now + {MAX_FUTURE})",
                    {"index": i, "request_id": op.request_id},
                )
        sem = asyncio.Semaphore(64)

        async def send(op: llmops.LLMOperation) -> None:
            async with sem:
                # The message id is tenant-scoped: request ids chosen by callers are only
                # unique within a tenant (gateway events use their random request id).
                await jetstream.publish(
                    self.js,
                    llmops.OPERATION_SUBJECT,
                    event_of(op, tenant),
                    ctx,
                    msg_id=f"{tenant}:{op.request_id}",
                    codec=self.codec,
                )

        async with asyncio.TaskGroup() as tg:
            for op in req.operations:
                tg.create_task(send(op))
        return LogResponse(accepted=len(req.operations))

    async def query(self, req: QueryRequest, ctx: Context) -> QueryResponse:
        return await self.reader.query(tenant_of(ctx), req)

    async def metrics(self, req: MetricsRequest, ctx: Context) -> MetricsResponse:
        # What one reply may carry: the codec limits callers decode with (the default
        # ones), and NATS's max payload (the same 8 MB), less room for the envelope.
        limits = Limits()
        return await self.reader.metrics(
            tenant_of(ctx),
            req,
            max_items=limits.max_container,
            max_bytes=limits.max_bytes - REPLY_ENVELOPE_BYTES,
        )

    async def cost(self, req: CostRequest, ctx: Context) -> CostResponse:
        return await self.reader.cost(tenant_of(ctx), req)

    async def set_budget(self, req: SetBudgetRequest, ctx: Context) -> Budget:
        return await self.budgets.set(tenant_of(ctx), req)

    async def get_budgets(self, req: GetBudgetsRequest, ctx: Context) -> GetBudgetsResponse:
        return GetBudgetsResponse(budgets=await self.budgets.all(tenant_of(ctx)))

    # ------------------------------------------------------------ the consumer

    async def store_batch(self, batch: Sequence[Delivery]) -> list[tuple[Delivery, str]]:
        """Store one fetched batch; returns the deliveries refused (recorded as failed)."""
        refused: list[tuple[Delivery, str]] = []
        good: list[tuple[Delivery, Row]] = []
        oldest = self._oldest()
        for d in batch:
            if not d.ctx.tenant:
                refused.append((d, "event without a tenant"))
                continue
            try:
                row = Row.of(d.ctx.tenant, OperationEvent.model_validate(d.data))
            except ValidationError as exc:
                refused.append((d, f"invalid event: {_first_error(exc)}"))
                continue
            if row.ts < oldest:
                # Its partition is gone (or about to be): storing it would resurrect a day
                # retention dropped. Acknowledged and counted in the log, not stored.
                _log.warning("llmops_event_expired", request_id=row.request_id, ts=row.ts)
                continue
            good.append((d, row))
        rows = [r for _, r in good]
        try:
            await self.store.ingest(rows)
        except Exception as exc:
            if isinstance(translate(exc), RetryableError):
                raise
            # A value Postgres refused: store the rows one by one to find the bad ones.
            _log.warning("llmops_batch_split", size=len(rows), error=type(exc).__name__)
            rows = []
            for d, row in good:
                try:
                    await self.store.ingest([row])
                    rows.append(row)
                except Exception as one:
                    if isinstance(translate(one), RetryableError):
                        raise
                    refused.append((d, f"not storable: {translate(one).message}"))
        for d, reason in refused:
            await self.store.record_failed(d.ctx.tenant, _request_id(d.data), reason, _json(d.data))
        touched = {(r.tenant_id, r.user_id or None) for r in rows}
        try:
            await self.budgets.evaluate(touched)
        except Exception:
            # Stored already; the next batch or the housekeeping pass evaluates again.
            _log.exception("llmops_budget_evaluation_failed")
        return refused

    async def invalid_message(self, msg: Msg, reason: str) -> None:
        await self.store.record_failed(None, None, f"undecodable: {reason}", None)

    async def housekeeping(self, stopping: asyncio.Event) -> None:
        """Partitions ahead, retention, unpublished alerts: at start and every 10 minutes."""
        while not stopping.is_set():
            try:
                await self.store.ensure_ahead()
                await self.store.drop_before(self._oldest().date())
                await self.budgets.publish_pending()
            except Exception:
                _log.exception("llmops_housekeeping_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), HOUSEKEEPING_S)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(map(str, err['loc']))}: {err['msg']}"


def _request_id(data: object) -> str | None:
    value = data.get("event_id") if isinstance(data, dict) else None
    return value[:128] if isinstance(value, str) else None


def _json(data: object) -> str | None:
    try:
        return json.dumps(data, default=str)[:100_000]
    except (TypeError, ValueError):
        return None


def build_worker(ops: LLMOps, codec: Codec | None = None, max_concurrency: int = 64) -> Worker:
    return Worker(
        "llmops",
        endpoints=[
            Endpoint(llmops.LOG, ops.log),
            Endpoint(llmops.QUERY, ops.query),
            Endpoint(llmops.METRICS, ops.metrics),
            Endpoint(llmops.COST, ops.cost),
            Endpoint(llmops.SET_BUDGET, ops.set_budget),
            Endpoint(llmops.GET_BUDGETS, ops.get_budgets),
        ],
        version=VERSION,
        description="LLM operations: storage, metrics, cost, budgets",
        codec=codec or Codec(),
        max_concurrency=max_concurrency,
    )


@asynccontextmanager
async def lifespan(env: WorkerEnv) -> AsyncIterator[Worker]:
    async with database(env.settings, SCHEMA, "workers.llmops") as db:
        codec = Codec(env.settings.codec_type)
        store = Store(db)
        await store.ensure_ahead()
        ops = LLMOps(
            store,
            Reader(db),
            Budgets(db, env.js, codec),
            env.js,
            retention_days=env.settings.llmops_retention_days,
            codec=codec,
        )
        consumer = BatchConsumer(
            env.js,
            jetstream.LLMOPS_CONSUMER,
            ops.store_batch,
            on_invalid=ops.invalid_message,
            codec=codec,
        )
        stopping = asyncio.Event()
        # Two batches in hand per worker: Python and Postgres work side by side.
        loops = [consumer.run] * CONSUMERS
        async with background(stopping, *loops, ops.housekeeping):
            yield build_worker(ops, codec, min(env.settings.max_concurrency, 64))
