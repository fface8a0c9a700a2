"""Context building: a message list for a model under a token budget.

Parts, highest priority first: the system part and the query (required), then passages in
the order given (best first), then history newest first (``prefer="history"`` swaps the
two). What is kept is a prefix of that order: the first part that does not fit is
truncated if it is a passage and at least ``min_truncate_tokens`` of it fit, otherwise
dropped, and every part after it is dropped — so a lower-priority part is never kept
while a higher-priority one is left out, and history stays a contiguous, newest run.

Tokens are counted by the gateway (``gateway.count_tokens.request``) so the budget agrees
with the model's tokenizer: one call counts the messages and one the passages, then the
assembled list is counted again and trimmed until the gateway's total fits (joining
passages into one message and per-message overhead make the sum of parts an estimate).
When no gateway answers, every count falls back to :class:`EstimateCounter`
(``ceil(chars / 3)``, conservative for English and code with BPE tokenizers) and the
response says ``estimated: true``.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

from bus.client import Client
from bus.context import child
from bus.errors import InvalidRequest, Timeout, Unavailable, UpstreamError
from schemas import gateway
from schemas.context import Context
from schemas.gateway import CountTokensMessage, CountTokensRequest, CountTokensResponse
from schemas.prompt import Message, OmittedPart, PromptContextRequest

#: How long one count call may take before the builder falls back to the estimate.
COUNT_TIMEOUT_S = 3.0
#: Estimate: characters per token (3 over-counts typical English/code BPE, ~4 chars/token).
ESTIMATE_CHARS_PER_TOKEN = 3
#: Estimate: tokens each message adds for its role and framing, and for priming the reply
#: (OpenAI's published counting recipe uses 3-4 and 3).
ESTIMATE_MESSAGE_OVERHEAD = 4
ESTIMATE_REPLY_OVERHEAD = 3
#: Rounds of "count the assembled list, trim, count again" before giving up on optional parts.
MAX_FIT_ROUNDS = 8
TRUNCATION_MARK = " …"


class TokenCounter(Protocol):
    estimated: bool

    async def messages(self, messages: list[dict[str, str]]) -> CountTokensResponse: ...

    async def texts(self, texts: list[str]) -> CountTokensResponse: ...


class GatewayUnavailable(Exception):
    """No gateway answered a count in time: fall back to the estimate."""


class GatewayCounter:
    estimated = False

    def __init__(self, client: Client, ctx: Context, model: str | None) -> None:
        self.client = client
        self.ctx = ctx
        self.model = model

    async def _count(self, request: CountTokensRequest) -> CountTokensResponse:
        try:
            return await self.client.call(
                gateway.COUNT_TOKENS, request, child(self.ctx, timeout=COUNT_TIMEOUT_S)
            )
        except (Unavailable, Timeout) as exc:
            raise GatewayUnavailable(str(exc)) from exc

    async def messages(self, messages: list[dict[str, str]]) -> CountTokensResponse:
        payload = [CountTokensMessage(**m) for m in messages]
        out = await self._count(CountTokensRequest(model=self.model, messages=payload))
        return _one_count_each(out, len(messages))

    async def texts(self, texts: list[str]) -> CountTokensResponse:
        out = await self._count(CountTokensRequest(model=self.model, texts=texts))
        return _one_count_each(out, len(texts))


def _one_count_each(out: CountTokensResponse, expected: int) -> CountTokensResponse:
    if len(out.counts) != expected:
        raise UpstreamError(
            f"gateway count_tokens answered {len(out.counts)} counts for {expected} items"
        )
    return out


class EstimateCounter:
    """The documented fallback: ``ceil(chars / 3)`` per text, plus message framing."""

    estimated = True

    def __init__(self, model: str | None) -> None:
        self.model = model or "estimate"

    @staticmethod
    def _text(text: str) -> int:
        return math.ceil(len(text) / ESTIMATE_CHARS_PER_TOKEN)

    async def messages(self, messages: list[dict[str, str]]) -> CountTokensResponse:
        counts = [ESTIMATE_MESSAGE_OVERHEAD + self._text(m["content"]) for m in messages]
        return CountTokensResponse(
            model=self.model, total=sum(counts) + ESTIMATE_REPLY_OVERHEAD, counts=counts
        )

    async def texts(self, texts: list[str]) -> CountTokensResponse:
        counts = [self._text(t) for t in texts]
        return CountTokensResponse(model=self.model, total=sum(counts), counts=counts)


@dataclass
class _Part:
    kind: Literal["passage", "history"]
    index: int
    tokens: int
    text: str  # a passage formatted with its source line, or a history message's content
    role: str = "user"
    source_id: str | None = None
    kept_text: str | None = None  # set when truncated
    kept_tokens: int = 0


@dataclass
class Built:
    model: str | None
    messages: list[dict[str, str]]
    total_tokens: int
    estimated: bool
    passages_used: list[str]
    history_used: int
    omitted: list[OmittedPart] = field(default_factory=list)


def format_passage(source_id: str, text: str) -> str:
    return f"[source: {source_id}]\n{text}"


def truncate(text: str, tokens: int, keep_tokens: int) -> str:
    """Cut ``text`` (``tokens`` long) to about ``keep_tokens``, at a word boundary."""
    if keep_tokens <= 0 or tokens <= 0:
        return ""
    cut = max(1, int(len(text) * keep_tokens / tokens) - len(TRUNCATION_MARK))
    head = text[:cut]
    space = max(head.rfind(" "), head.rfind("\n"))
    if space > cut * 0.8:
        head = head[:space]
    return head.rstrip() + TRUNCATION_MARK


async def build(
    req: PromptContextRequest, system: list[dict[str, str]], counter: TokenCounter
) -> Built:
    """Assemble and fit the messages with ``counter``; raise ``GatewayUnavailable`` if the
    gateway stops answering (the caller retries with the estimate)."""
    query = [{"role": "user", "content": req.query}] if req.query is not None else []
    history = [m.model_dump() for m in req.history]
    formatted = [format_passage(p.source_id, p.text) for p in req.passages]

    try:
        async with asyncio.TaskGroup() as tasks:
            counted = tasks.create_task(counter.messages([*system, *history, *query]))
            passage_counts = (
                tasks.create_task(counter.texts([req.passages_intro, *formatted]))
                if formatted
                else None
            )
    except ExceptionGroup as group:  # one count failed: surface it as itself
        raise group.exceptions[0] from None
    m = counted.result()
    n_sys, n_hist = len(system), len(history)
    history_tokens = m.counts[n_sys : n_sys + n_hist]
    overhead = m.total - sum(m.counts)
    required = sum(m.counts[:n_sys]) + sum(m.counts[n_sys + n_hist :]) + overhead
    if required > req.budget_tokens:
        raise InvalidRequest(
            f"the system part and query need {required} tokens; the budget is {req.budget_tokens}",
            {"required_tokens": required, "budget_tokens": req.budget_tokens},
        )

    intro_tokens = 0
    passages: list[_Part] = []
    if passage_counts is not None:
        p = passage_counts.result()
        intro_tokens = p.counts[0] + ESTIMATE_MESSAGE_OVERHEAD  # the passages message framing
        passages = [
            _Part("passage", i, p.counts[i + 1], formatted[i], source_id=req.passages[i].source_id)
            for i in range(len(formatted))
        ]
    newest_first = [
        _Part("history", i, history_tokens[i], history[i]["content"], role=history[i]["role"])
        for i in reversed(range(n_hist))
    ]
    order = passages + newest_first if req.prefer == "passages" else newest_first + passages

    # Greedy on the parts' own counts: a prefix of the priority order, maybe one truncation.
    kept: list[_Part] = []
    left = req.budget_tokens - required
    for part in order:
        extra = intro_tokens if part.kind == "passage" and not _has_passage(kept) else 0
        if part.tokens + extra <= left:
            kept.append(part)
            left -= part.tokens + extra
            continue
        room = left - extra
        if part.kind == "passage" and room >= req.min_truncate_tokens:
            part.kept_tokens = room
            part.kept_text = truncate(part.text, part.tokens, room)
            kept.append(part)
        break

    # Count what the model will see; trim until the gateway's total fits.
    for _ in range(MAX_FIT_ROUNDS):
        messages = _layout(req, system, kept, query)
        final = await counter.messages(messages)
        if final.total <= req.budget_tokens:
            return await _result(req, order, kept, messages, final, counter)
        over = final.total - req.budget_tokens
        last = kept[-1] if kept else None
        if last is None:
            break
        if last.kept_text is not None or last.kind == "passage":
            base = last.kept_tokens if last.kept_text is not None else last.tokens
            target = base - over - 1
            if target >= req.min_truncate_tokens:
                last.kept_tokens = target
                last.kept_text = truncate(last.text, last.tokens, target)
                continue
        kept.pop()
        last.kept_text, last.kept_tokens = None, 0
    # Out of rounds: keep only what is required.
    kept = []
    messages = _layout(req, system, kept, query)
    final = await counter.messages(messages)
    if final.total > req.budget_tokens:
        raise InvalidRequest(
            f"the system part and query need {final.total} tokens; the budget is"
            f" {req.budget_tokens}",
            {"required_tokens": final.total, "budget_tokens": req.budget_tokens},
        )
    return await _result(req, order, kept, messages, final, counter)


def _has_passage(parts: list[_Part]) -> bool:
    return any(p.kind == "passage" for p in parts)


def _layout(
    req: PromptContextRequest,
    system: list[dict[str, str]],
    kept: list[_Part],
    query: list[dict[str, str]],
) -> list[dict[str, str]]:
    """System part, one message of passages (in rank order), history (in order), query."""
    passages = sorted((p for p in kept if p.kind == "passage"), key=lambda p: p.index)
    history = sorted((p for p in kept if p.kind == "history"), key=lambda p: p.index)
    messages = list(system)
    if passages:
        body = "\n\n".join(p.kept_text if p.kept_text is not None else p.text for p in passages)
        messages.append({"role": "system", "content": f"{req.passages_intro}\n\n{body}"})
    messages.extend({"role": p.role, "content": p.text} for p in history)
    messages.extend(query)
    return messages


async def _result(
    req: PromptContextRequest,
    order: list[_Part],
    kept: list[_Part],
    messages: list[dict[str, str]],
    final: CountTokensResponse,
    counter: TokenCounter,
) -> Built:
    kept_ids = {(p.kind, p.index) for p in kept}
    truncated = [p for p in kept if p.kept_text is not None]
    if truncated:  # report what the cut passage really weighs now
        recount = await counter.texts([p.kept_text or "" for p in truncated])
        for part, tokens in zip(truncated, recount.counts, strict=True):
            part.kept_tokens = tokens
    omitted = [
        OmittedPart(
            kind=p.kind,
            index=p.index,
            source_id=p.source_id,
            tokens=p.tokens,
            action="truncated",
            kept_tokens=p.kept_tokens,
        )
        for p in truncated
    ]
    omitted += [
        OmittedPart(
            kind=p.kind,
            index=p.index,
            source_id=p.source_id,
            tokens=p.tokens,
            action="dropped",
        )
        for p in order
        if (p.kind, p.index) not in kept_ids
    ]
    omitted.sort(key=lambda o: (o.kind, o.index))
    passages = sorted((p for p in kept if p.kind == "passage"), key=lambda p: p.index)
    return Built(
        model=final.model,
        messages=messages,
        total_tokens=final.total,
        estimated=counter.estimated,
        passages_used=[p.source_id or "" for p in passages],
        history_used=sum(1 for p in kept if p.kind == "history"),
        omitted=omitted,
    )


def as_messages(messages: list[dict[str, str]]) -> list[Message]:
    return [Message(role=m["role"], content=m["content"]) for m in messages]
