"""Fitting a conversation into the model's window: count, then drop the oldest turns.

Tokens are counted by the gateway (``gateway.count_tokens``) for the model in use; when
it cannot answer, a conservative estimate (one token per two bytes of UTF-8, which is
more than any common tokenizer produces for text) stands in, so the window is never
exceeded because a count was missing. The system message and the new user message are
always kept; if they alone do not fit, the request is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bus.errors import PayloadTooLarge

#: Tokens a chat format adds per message (role, separators), as OpenAI's cookbook counts.
PER_MESSAGE_TOKENS = 4
#: Tokens that prime the reply.
REPLY_PRIMING_TOKENS = 3

Message = dict[str, Any]
Counter = Callable[[list[str]], Awaitable[list[int] | None]]


def estimate(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 2)


def message_text(message: Message) -> str:
    text = message.get("content") or ""
    if message.get("tool_calls"):
        text += json.dumps(message["tool_calls"])
    return text


async def count(messages: Sequence[Message], counter: Counter) -> list[int]:
    """Tokens of each message, with the per-message overhead."""
    texts = [message_text(m) for m in messages]
    counted = await counter(texts) if texts else []
    if counted is None:
        counted = [estimate(t) for t in texts]
    return [c + PER_MESSAGE_TOKENS for c in counted]


async def fit(
    system: Sequence[Message],
    history: Sequence[Message],
    latest: Message,
    *,
    window: int,
    reserve: int,
    tools: Sequence[dict[str, Any]],
    counter: Counter,
) -> tuple[list[Message], int]:
    """``system + kept history + latest`` within ``window - reserve`` tokens; and how many
    history messages (oldest first) were left out."""
    everything = [*system, *history, latest]
    counts = await count(everything, counter)
    tools_tokens = estimate(json.dumps(list(tools))) if tools else 0
    budget = window - reserve - tools_tokens - REPLY_PRIMING_TOKENS
    fixed = sum(counts[: len(system)]) + counts[-1]
    if fixed > budget:
        raise PayloadTooLarge(
            f"the system prompt and message need {fixed} tokens; the model's window leaves "
            f"{max(budget, 0)} (window {window}, reserved for the answer {reserve})"
        )
    history_counts = counts[len(system) : -1]
    total = fixed + sum(history_counts)
    dropped = 0
    while total > budget and dropped < len(history):
        total -= history_counts[dropped]
        dropped += 1
    return [*system, *history[dropped:], latest], dropped
