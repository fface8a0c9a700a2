"""End to end: the Prompt Service's token counts agree with the real gateway's.

The real gateway on its default local configuration (no GATEWAY_MODELS) counts with the
local models' real tokenizers; the real prompt worker builds a context under a budget
through it. Whatever the prompt worker reports must be what ``gateway.count_tokens``
says of the returned messages for the same model.

No other module serves ``gateway`` or ``prompt`` while this one runs (their fixtures are
module- or function-scoped).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bus.client import Client
from bus.context import new_context
from bus.worker import WorkerEnv
from mesh.runner import serving
from schemas.gateway import CountTokensResponse
from schemas.prompt import PromptContextResponse
from tests.gateway_support import serve_gateway
from workers.gateway.config import load_config

MODEL = "local-chat"
SYSTEM = "You are the handbook assistant. Answer only from the passages and cite them."
HISTORY = [
    {"role": "user", "content": "Hi! I joined the company last month."},
    {"role": "assistant", "content": "Welcome aboard. What would you like to know?"},
    {"role": "user", "content": "Where do I find the travel policy?"},
    {"role": "assistant", "content": "It is in the handbook, chapter four, 'Travel'."},
]
PASSAGES = [
    {
        "source_id": "handbook-vacation",
        "text": "Employees get 25 vacation days per year. Unused days carry over until March.",
    },
    {
        "source_id": "handbook-sick",
        "text": "Sick leave is unlimited but needs a doctor's note after three consecutive days.",
    },
    {
        "source_id": "handbook-parental",
        "text": " ".join(
            f"Parental leave rule {i}: sixteen weeks at full pay, bookable in blocks."
            for i in range(12)
        ),
    },
]
QUERY = "How many vacation days do I get, and do unused ones carry over?"


@pytest.fixture(scope="module")
async def services(env: WorkerEnv) -> AsyncIterator[None]:
    async with serve_gateway(load_config(None), env), serving(["prompt"], env):
        yield


pytestmark = pytest.mark.usefixtures("services")


def _ctx(tenant: str) -> Any:
    return new_context(tenant, user="tester", timeout=60.0)


async def _context(client: Client, tenant: str, budget: int) -> PromptContextResponse:
    return await client.request(
        "prompt.context.request",
        {
            "model": MODEL,
            "budget_tokens": budget,
            "system_text": SYSTEM,
            "history": HISTORY,
            "passages": PASSAGES,
            "query": QUERY,
        },
        _ctx(tenant),
        PromptContextResponse,
    )


async def _gateway_total(client: Client, tenant: str, out: PromptContextResponse) -> int:
    counted = await client.request(
        "gateway.count_tokens.request",
        {"model": MODEL, "messages": [m.model_dump() for m in out.messages]},
        _ctx(tenant),
        CountTokensResponse,
    )
    return counted.total


@pytest.fixture
def tenant() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


async def test_full_context_total_is_the_gateways_count(client: Client, tenant: str):
    out = await _context(client, tenant, budget=4000)
    assert out.estimated is False
    assert out.omitted == [] and out.history_used == len(HISTORY)
    assert out.passages_used == [p["source_id"] for p in PASSAGES]
    assert out.total_tokens == await _gateway_total(client, tenant, out)


async def test_trimmed_context_total_is_the_gateways_count_and_fits(client: Client, tenant: str):
    full = await _context(client, tenant, budget=4000)
    # A budget that forces the long passage to be cut and the history to be dropped.
    budget = full.total_tokens - 150
    out = await _context(client, tenant, budget=budget)
    assert out.estimated is False
    assert out.omitted, "the budget should have trimmed something"
    measured = await _gateway_total(client, tenant, out)
    print(f"budget={budget} full={full.total_tokens} trimmed={out.total_tokens}")
    assert out.total_tokens == measured <= budget
    assert out.messages[0].content == SYSTEM and out.messages[-1].content == QUERY
