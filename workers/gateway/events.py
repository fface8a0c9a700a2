"""LLMOps events: one per LLM call, measured here and published in the background."""

from __future__ import annotations

import time
from typing import Any

from nats.js import JetStreamContext

from bus import jetstream
from bus.codec import Codec
from bus.context import new_id
from schemas.context import Context
from schemas.gateway import LLMOPS_SUBJECT, LLMOpsEvent, LLMOpsOperation, Usage
from workers.gateway.background import Background
from workers.gateway.dispatch import Outcome

#: How long one LLMOps event publish waits for JetStream's ack.
PUBLISH_TIMEOUT_S = 2.0


class Events:
    """LLMOps events, published in the background: never slows or fails a request."""

    def __init__(
        self,
        js: JetStreamContext,
        background: Background,
        codec: Codec,
        subject: str = LLMOPS_SUBJECT,
    ) -> None:
        self.js = js
        self.background = background
        self.codec = codec
        self.subject = subject

    def publish(self, event: LLMOpsEvent, ctx: Context) -> None:
        async def send() -> None:
            # The request id is the message id: a retried publish is deduplicated.
            await jetstream.publish(
                self.js,
                self.subject,
                event,
                ctx,
                msg_id=event.event_id,
                codec=self.codec,
                timeout=PUBLISH_TIMEOUT_S,
            )

        self.background.submit("llmops_event", send)


class CallRecord:
    """One LLM call being measured, for its LLMOps event."""

    def __init__(self, operation: LLMOpsOperation, alias: str, ctx: Context) -> None:
        self.operation = operation
        self.alias = alias
        self.ctx = ctx
        self.started = time.perf_counter()
        self.time_ms = int(time.time() * 1000)
        self.first_token: float | None = None
        self.outcome: Outcome[Any] | None = None
        self.attempts = 0

    def event(
        self,
        *,
        usage: Usage | None = None,
        cost: float = 0.0,
        cache_hit: bool = False,
        error_code: str | None = None,
        prompt: Any = None,
        completion: Any = None,
    ) -> LLMOpsEvent:
        ctx = self.ctx
        served = self.outcome.alias.name if self.outcome else None
        deployment = self.outcome.deployment if self.outcome else None
        return LLMOpsEvent(
            event_id=ctx.request_id or new_id(),
            time_ms=self.time_ms,
            operation=self.operation,
            tenant=ctx.tenant,
            user=ctx.user,
            correlation_id=ctx.correlation_id,
            request_id=ctx.request_id,
            model=self.alias,
            served_by=served,
            provider=deployment.provider if deployment else None,
            provider_model=deployment.model if deployment else None,
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0,
            cached_tokens_read=(usage.cached_tokens_read or None) if usage else None,
            cached_tokens_write=(usage.cached_tokens_write or None) if usage else None,
            cost=cost,
            latency_ms=round((time.perf_counter() - self.started) * 1000, 3),
            ttft_ms=(
                round((self.first_token - self.started) * 1000, 3)
                if self.first_token is not None
                else None
            ),
            cache_hit=cache_hit,
            attempts=self.attempts if self.outcome is None else self.outcome.attempts,
            status="error" if error_code else "ok",
            error_code=error_code,
            prompt=prompt,
            completion=completion,
        )
