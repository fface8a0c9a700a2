"""Helpers for the Prompt Service tests: the service built from its parts (so a test can
look at its renderer), and a test-only ``gateway.count_tokens`` worker.

The token counter here is a deterministic regex tokenizer (words and punctuation marks),
because real tokenizers (tiktoken) download their encodings and the tests run offline.
The real gateway answers the same contract with the model's tokenizer; the Prompt Service
relies only on the contract, never on how counting is done.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bus.client import Client
from bus.context import new_context
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import gateway
from schemas.context import Context
from schemas.gateway import CountTokensRequest, CountTokensResponse
from workers.prompt.renderer import Renderer
from workers.prompt.sandbox import Limits
from workers.prompt.service import PromptHandlers, build_worker
from workers.prompt.store import PromptStore, open_database

_TOKEN = re.compile(r"\w+|[^\w\s]")
#: Framing per message and reply priming, as OpenAI-style counters add them.
MESSAGE_OVERHEAD = 3
REPLY_OVERHEAD = 3
TEST_MODEL = "test-words"


def count_text(text: str) -> int:
    return len(_TOKEN.findall(text))


class TokenCounter:
    def __init__(self) -> None:
        self.calls = 0

    async def count_tokens(self, req: CountTokensRequest, ctx: Context) -> CountTokensResponse:
        self.calls += 1
        if req.messages is not None:
            counts = [
                MESSAGE_OVERHEAD + count_text(m.role) + count_text(m.content) for m in req.messages
            ]
            total = sum(counts) + REPLY_OVERHEAD
        else:
            counts = [count_text(t) for t in req.texts or []]
            total = sum(counts)
        return CountTokensResponse(model=req.model or TEST_MODEL, total=total, counts=counts)


def counter_worker(counter: TokenCounter) -> Worker:
    return Worker(
        "gateway",
        endpoints=[Endpoint(gateway.COUNT_TOKENS, counter.count_tokens)],
    )


@asynccontextmanager
async def prompt_service(
    env: WorkerEnv, *, client: Client | None = None, limits: Limits | None = None
) -> AsyncIterator[PromptHandlers]:
    """The prompt worker serving on ``env.nc``, with its handlers (and renderer) exposed."""
    assert env.settings.database_url
    db = await open_database(env.settings.database_url, max_size=8)
    renderer = Renderer(limits)
    try:
        handlers = PromptHandlers(PromptStore(db), renderer, client or env.client)
        async with build_worker(handlers).serve(env.nc):
            yield handlers
    finally:
        renderer.close()
        await db.close()


class Caller:
    """``await call("render", {...})`` → the answer of ``prompt.render.request`` for a tenant."""

    def __init__(self, client: Client, tenant: str) -> None:
        self.client = client
        self.tenant = tenant

    async def __call__(self, op: str, payload: dict[str, Any], response: Any = None) -> Any:
        ctx = new_context(self.tenant, user="tester", timeout=15.0)
        return await self.client.request(f"prompt.{op}.request", payload, ctx, response)
