"""Context building over NATS, with token counts from a test ``gateway.count_tokens`` worker
(see tests/prompt_support.py for why its tokenizer is a regex)."""

from __future__ import annotations

import uuid

import pytest

from bus.client import Client
from bus.context import new_context
from bus.errors import InvalidRequest
from schemas.gateway import CountTokensResponse
from schemas.prompt import PromptContextResponse
from tests.prompt_support import (
    MESSAGE_OVERHEAD,
    TEST_MODEL,
    Caller,
    TokenCounter,
    count_text,
    counter_worker,
    prompt_service,
)


@pytest.fixture(scope="module")
async def service(env):
    # Its own client: the fallback test trips the count_tokens breaker, which must not
    # leak into other modules' clients.
    async with prompt_service(env, client=Client(env.nc)) as handlers:
        yield handlers


@pytest.fixture
async def gateway(env):
    counter = TokenCounter()
    async with counter_worker(counter).serve(env.nc):
        yield counter


@pytest.fixture
def call(service, client) -> Caller:
    return Caller(client, f"t-{uuid.uuid4().hex[:10]}")


def passage(i: int, words: int) -> dict[str, str]:
    return {"source_id": f"doc-{i}", "text": " ".join(f"p{i}w{j}" for j in range(words))}


def turn(i: int, words: int) -> dict[str, str]:
    role = "user" if i % 2 == 0 else "assistant"
    return {"role": role, "content": " ".join(f"h{i}w{j}" for j in range(words))}


async def context(call: Caller, **payload) -> PromptContextResponse:
    return await call("context", payload, PromptContextResponse)


async def gateway_total(client: Client, messages: list[dict[str, str]]) -> int:
    out = await client.request(
        "gateway.count_tokens.request",
        {"model": TEST_MODEL, "messages": messages},
        new_context("t", timeout=5.0),
        CountTokensResponse,
    )
    return out.total


async def test_everything_fits_when_the_budget_allows(call, gateway, client):
    out = await context(
        call,
        model=TEST_MODEL,
        budget_tokens=10_000,
        system_text="You answer from the passages.",
        passages=[passage(0, 10), passage(1, 10)],
        history=[turn(0, 5), turn(1, 5)],
        query="What is p0w3?",
    )
    assert out.estimated is False and out.model == TEST_MODEL
    assert out.passages_used == ["doc-0", "doc-1"] and out.history_used == 2
    assert out.omitted == []
    roles = [m.role for m in out.messages]
    assert roles == ["system", "system", "user", "assistant", "user"]
    assert "[source: doc-0]" in out.messages[1].content
    assert out.messages[-1].content == "What is p0w3?"
    assert out.total_tokens == await gateway_total(client, [m.model_dump() for m in out.messages])


async def test_lowest_priority_parts_go_first_and_the_budget_holds(call, gateway, client):
    passages = [passage(i, 40) for i in range(4)]
    history = [turn(i, 30) for i in range(4)]
    base = {
        "model": TEST_MODEL,
        "system_text": "Be brief.",
        "passages": passages,
        "history": history,
        "query": "Question?",
    }
    for budget in range(40, 420, 20):
        out = await context(call, budget_tokens=budget, **base)
        measured = await gateway_total(client, [m.model_dump() for m in out.messages])
        assert out.total_tokens == measured <= budget, budget
        # Kept parts are a prefix of the priority order: passages by rank, then history
        # newest first; nothing of lower priority survives a dropped part.
        kept_passages = [int(s.split("-")[1]) for s in out.passages_used]
        assert kept_passages == list(range(len(kept_passages)))
        if out.history_used:
            assert len(kept_passages) == len(passages)
            assert not any(o.kind == "passage" for o in out.omitted)
        kept_history = [m.content for m in out.messages if m.content.startswith("h")]
        assert kept_history == [h["content"] for h in history[len(history) - out.history_used :]]
        assert out.messages[0].content == "Be brief." and out.messages[-1].content == "Question?"


async def test_the_boundary_passage_is_truncated_and_reported(call, gateway):
    out = await context(
        call,
        model=TEST_MODEL,
        budget_tokens=130,
        passages=[passage(0, 40), passage(1, 200), passage(2, 10)],
        query="Q?",
    )
    assert out.passages_used == ["doc-0", "doc-1"]
    truncated = [o for o in out.omitted if o.action == "truncated"]
    assert [(o.source_id, o.tokens) for o in truncated] == [
        ("doc-1", count_text("[source: doc-1]") + 200)
    ]
    assert 0 < truncated[0].kept_tokens < truncated[0].tokens
    assert out.messages[0].content.rstrip().endswith("…")
    dropped = [o.source_id for o in out.omitted if o.action == "dropped"]
    assert dropped == ["doc-2"]
    assert out.total_tokens <= 130


async def test_prefer_history_keeps_the_conversation_before_passages(call, gateway):
    history = [turn(i, 20) for i in range(3)]
    out = await context(
        call,
        model=TEST_MODEL,
        budget_tokens=110,
        prefer="history",
        history=history,
        passages=[passage(0, 60)],
        query="Q?",
        min_truncate_tokens=1000,
    )
    assert out.history_used == 3 and out.passages_used == []
    assert [o.source_id for o in out.omitted] == ["doc-0"]


async def test_history_is_dropped_oldest_first(call, gateway):
    history = [turn(i, 20) for i in range(5)]
    out = await context(call, model=TEST_MODEL, budget_tokens=90, history=history, query="Q?")
    assert 0 < out.history_used < 5
    kept = [m.content for m in out.messages[:-1]]
    assert kept == [h["content"] for h in history[5 - out.history_used :]]
    assert [o.index for o in out.omitted] == list(range(5 - out.history_used))
    assert all(o.kind == "history" and o.action == "dropped" for o in out.omitted)


async def test_a_budget_below_the_system_part_and_query_is_invalid(call, gateway):
    with pytest.raises(InvalidRequest) as info:
        await context(
            call,
            model=TEST_MODEL,
            budget_tokens=10,
            system_text="A fairly long system prompt that does not fit.",
            query="Q?",
        )
    assert info.value.details["budget_tokens"] == 10


async def test_system_template_is_rendered_and_its_model_used(call, gateway):
    await call(
        "create",
        {
            "name": "sys",
            "type": "text",
            "template": "You are {{ persona }}.",
            "config": {"model": "from-template"},
        },
    )
    out = await context(
        call,
        budget_tokens=1000,
        system={"name": "sys", "variables": {"persona": "helpful"}},
        query="Hi",
    )
    assert out.messages[0].content == "You are helpful."
    assert out.system is not None and (out.system.name, out.system.version) == ("sys", 1)
    assert out.model == "from-template"
    expected = sum(
        MESSAGE_OVERHEAD + count_text(m.role) + count_text(m.content) for m in out.messages
    )
    assert out.total_tokens == expected + 3


async def test_system_template_errors_are_reported(call, gateway):
    await call("create", {"name": "sys2", "type": "text", "template": "Hi {{ who }}"})
    with pytest.raises(InvalidRequest, match="'who'"):
        await context(call, budget_tokens=100, system={"name": "sys2"}, query="x")


# Last in the module: with no gateway the client's breaker for count_tokens opens for a
# few seconds, and every test above needs it closed.
async def test_without_a_gateway_counts_fall_back_to_a_conservative_estimate(call):
    out = await context(
        call,
        budget_tokens=120,
        passages=[passage(0, 30), passage(1, 30)],
        query="Question?",
    )
    assert out.estimated is True
    assert out.total_tokens <= 120
    # ceil(chars / 3) per message plus framing: never below the regex tokenizer's count.
    assert out.total_tokens >= sum(count_text(m.content) for m in out.messages)
