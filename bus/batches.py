"""A durable pull consumer that hands messages to its handler in batches.

:class:`~bus.jetstream.JobConsumer` runs one job per message; event sinks (LLMOps) want
the opposite: many small events stored in one transaction. The handler gets every decoded
message of one fetch and answers which of them it refused (with the reason, after
recording them); the rest are acknowledged. If the handler raises, nothing is acknowledged
and the whole batch is nak'ed with a delay, so it is redelivered later — work is never
dropped while a dependency is down (the spec's ``max_deliver`` should then be -1).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from pydantic import ValidationError

from bus.codec import Codec
from bus.errors import MeshError
from bus.jetstream import ConsumerSpec
from schemas.context import Context

_log = structlog.get_logger(__name__)

#: Seconds one fetch waits for a first message when the stream is idle: also the longest
#: a lone event waits before it is handled.
FETCH_TIMEOUT_S = 0.5


@dataclass(frozen=True, slots=True)
class Delivery:
    msg: Msg
    ctx: Context
    data: Any


#: Handles one batch; returns the deliveries it refused, with the reason for each.
BatchHandler = Callable[[Sequence[Delivery]], Awaitable[Sequence[tuple[Delivery, str]]]]
#: Called for a message that is not a valid envelope (before it is terminated).
InvalidHandler = Callable[[Msg, str], Awaitable[None]]


class BatchConsumer:
    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        handler: BatchHandler,
        *,
        on_invalid: InvalidHandler,
        codec: Codec | None = None,
        fetch_timeout: float = FETCH_TIMEOUT_S,
    ) -> None:
        self.js = js
        self.spec = spec
        self.handler = handler
        self.on_invalid = on_invalid
        self.codec = codec or Codec()
        self.fetch_timeout = fetch_timeout

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
        """Handle batches until ``stop`` is set; the batch in hand finishes first."""
        await self.ensure()
        sub = await self.js.pull_subscribe_bind(durable=self.spec.durable, stream=self.spec.stream)
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(self.spec.batch, timeout=self.fetch_timeout)
                except TimeoutError:
                    continue
                except (
                    nats.errors.ConnectionClosedError,
                    nats.errors.ConnectionReconnectingError,
                    nats.js.errors.ServiceUnavailableError,
                ) as exc:
                    _log.warning("batch_fetch_failed", error=type(exc).__name__)
                    await asyncio.sleep(1.0)
                    continue
                await self.handle(msgs)
        finally:
            if not self.js._nc.is_closed:
                await sub.unsubscribe()

    async def handle(self, msgs: Sequence[Msg]) -> None:
        batch: list[Delivery] = []
        for msg in msgs:
            try:
                headers, data = self.codec.decode(msg.data)
                ctx = Context.model_validate(headers)
            except (MeshError, ValidationError) as exc:
                reason = exc.message if isinstance(exc, MeshError) else "invalid context"
                await self._refuse(msg, reason)
                continue
            batch.append(Delivery(msg, ctx, data))
        if not batch:
            return
        try:
            refused = await self._with_progress(batch)
        except Exception as exc:
            delivered = max(d.msg.metadata.num_delivered for d in batch)
            delay = self.spec.delay(delivered)
            _log.warning(
                "batch_retry", size=len(batch), delivered=delivered, error=type(exc).__name__
            )
            for d in batch:
                await _quietly(d.msg.nak(delay=delay))
            return
        skip = {id(d) for d, _ in refused}
        for d, reason in refused:
            _log.warning("batch_item_refused", subject=d.msg.subject, reason=reason)
            await _quietly(d.msg.term())
        for d in batch:
            if id(d) not in skip:
                await _quietly(d.msg.ack())

    async def _with_progress(self, batch: Sequence[Delivery]) -> Sequence[tuple[Delivery, str]]:
        """Run the handler, telling JetStream every third of ``ack_wait`` that the batch is
        still in hand: ``ack_wait`` can stay short, so the batch of a killed consumer is
        redelivered soon, while a slow batch is not redelivered under a live one."""

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self.spec.ack_wait / 3)
                for d in batch:
                    await _quietly(d.msg.in_progress())

        beat = asyncio.create_task(heartbeat())
        try:
            return await self.handler(batch)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _refuse(self, msg: Msg, reason: str) -> None:
        try:
            await self.on_invalid(msg, reason)
        except Exception:
            _log.exception("batch_invalid_report_failed", subject=msg.subject)
            await _quietly(msg.nak(delay=self.spec.delay(msg.metadata.num_delivered)))
            return
        await _quietly(msg.term())


async def _quietly(op: Awaitable[None]) -> None:
    # A failed ack/nak/term leaves the message to JetStream's redelivery after ack_wait.
    try:
        await op
    except Exception as exc:
        _log.warning("batch_ack_failed", error=type(exc).__name__)
