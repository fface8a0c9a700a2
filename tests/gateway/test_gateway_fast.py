"""The fast path against litellm, its reference: which deployments take it, and for the same
request the same body on the wire, the same answer, stream, usage and the same mesh error,
against the scripted OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bus.errors import MeshError
from schemas.gateway import GenerateRequest
from tests.openai_mock import Reply
from workers.gateway import llm
from workers.gateway.config import Deployment, GatewayConfig, parse_config
from workers.gateway.errors import (
    ContextWindowExceeded,
    counts_against_deployment,
    falls_back,
    map_error,
    retryable,
)
from workers.gateway.fast import FastPath, Target, target_of
from workers.gateway.settings import GatewaySettings

KEY = "sk-fast-test-0123456789"


def _config(url: str, model: str = "openai/gpt-4o-mini", **params: Any) -> GatewayConfig:
    entry = {"model": model, "api_base": url, "api_key": KEY, **params}
    return parse_config({"model_list": [{"model_name": "a", "litellm_params": entry}]})


@pytest.fixture
def config(mock) -> GatewayConfig:
    return _config(mock.url)


@pytest.fixture
async def fast(config) -> AsyncIterator[FastPath]:
    path = FastPath(config)
    yield path
    await path.aclose()


def _deployment(url: str, model: str = "openai/gpt-4o-mini", **params: Any) -> Deployment:
    return _config(url, model, **params).aliases["a"].deployments[0]


# ---------------------------------------------------------------- which deployments


@pytest.mark.parametrize(
    ("model", "params", "fast"),
    [
        ("openai/gpt-4o-mini", {}, True),
        ("openai/my-self-hosted-model", {}, True),  # OpenAI-compatible server, unknown model
        ("openai/gpt-4o-mini", {"organization": "org-1", "extra_headers": {"x-a": "b"}}, True),
        ("openai/o3-mini", {}, False),  # litellm rewrites its parameters
        ("openai/gpt-5", {}, False),
        ("openai/gpt-4o-mini", {"drop_params": True}, False),  # a setting only litellm knows
        ("azure/gpt-4o-mini", {"api_version": "2024-10-21"}, False),
        ("anthropic/claude-3-5-haiku-20241022", {}, False),
        ("local/SmolLM2-135M-Instruct", {}, False),
    ],
)
def test_only_plain_openai_compatible_deployments_take_the_fast_path(model, params, fast):
    deployment = _deployment("http://127.0.0.1:9/v1", model, **params)
    assert (target_of(deployment) is not None) is fast


def test_the_target_carries_the_key_organization_and_extra_headers():
    deployment = _deployment(
        "http://127.0.0.1:9/v1/", organization="org-1", extra_headers={"x-team": "ml"}
    )
    target = target_of(deployment)
    assert target is not None
    assert target.api_base == "http://127.0.0.1:9/v1"
    assert target.headers["Authorization"] == f"Bearer {KEY}"
    assert (target.headers["OpenAI-Organization"], target.headers["x-team"]) == ("org-1", "ml")


# ---------------------------------------------------------------- same request, same body

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Pune"}'},
}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
PNG = "data:image/png;base64,iVBORw0KGgo="

REQUESTS = {
    "plain": {"messages": [{"role": "user", "content": "hi"}]},
    "sampling": {
        "messages": [{"role": "system", "content": "brief"}, {"role": "user", "content": "hi"}],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 7,
        "stop": ["\n"],
        "seed": 42,
    },
    "developer role": {
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ]
    },
    "tools": {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [TOOL],
        "tool_choice": "auto",
    },
    "forced tool": {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
    "tool choice without tools": {
        "messages": [{"role": "user", "content": "hi"}],
        "tool_choice": "none",
    },
    "tool round trip": {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": [TOOL],
    },
    "json schema": {
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
        },
    },
    "json object": {
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"},
    },
    "image": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is it?"},
                    {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                ],
            }
        ]
    },
}


def _parts(payload: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    req = GenerateRequest.model_validate(payload)
    return llm.messages_of(req), llm.params_of(req)


def _only(config: GatewayConfig, fast: FastPath) -> tuple[Deployment, Target]:
    deployment = config.aliases["a"].deployments[0]
    target = fast.target(deployment)
    assert target is not None
    return deployment, target


@pytest.mark.parametrize("name", list(REQUESTS))
async def test_the_provider_receives_the_body_litellm_sends(config, fast, mock, name):
    deployment, target = _only(config, fast)
    messages, params = _parts(REQUESTS[name])
    mock.script("gpt-4o-mini", Reply())
    await llm.complete(deployment, messages, params, 10)
    reference = mock.seen[-1].body
    body = fast.body(target, messages, params)
    assert body is not None
    await fast.complete(target, body, 10)
    assert mock.seen[-1].body == reference


async def test_a_parameter_the_model_does_not_take_goes_to_litellm(config, fast, mock):
    _, target = _only(config, fast)
    messages, params = _parts(REQUESTS["plain"])
    assert fast.body(target, messages, {**params, "reasoning_effort": "low"}) is None


async def test_a_stream_sends_the_same_body_and_says_the_same(config, fast, mock):
    deployment, target = _only(config, fast)
    messages, params = _parts(REQUESTS["tools"])
    reply = Reply(content="one two", tool_calls=[CALL], finish_reason="tool_calls", cached=3)
    mock.script("gpt-4o-mini", reply)
    said = []
    for opened in (
        lambda: llm.open_stream(deployment, messages, params, 10),
        lambda: fast.open_stream(target, fast.body(target, messages, params) or {}, 10),
    ):
        first, rest = await opened()
        state = llm.StreamState()
        deltas = [state.take(first)] + [state.take(chunk) async for chunk in rest]
        said.append(
            (
                mock.seen[-1].body,
                [d.model_dump() for d in deltas if d is not None],
                state.message(),
                state.finish_reason,
                state.usage,
            )
        )
    assert said[0] == said[1]
    assert said[1][2].content == "one two" and said[1][4].cached_tokens_read == 3


async def test_an_answer_reads_the_same_through_both_paths(config, fast, mock):
    deployment, target = _only(config, fast)
    messages, params = _parts(REQUESTS["tools"])
    mock.script(
        "gpt-4o-mini",
        Reply(content=None, tool_calls=[CALL], finish_reason="tool_calls", usage=(20, 4), cached=8),
    )
    reference = llm.answer_of(await llm.complete(deployment, messages, params, 10))
    answer = await fast.complete(target, fast.body(target, messages, params) or {}, 10)
    assert answer == reference
    assert answer.usage.cached_tokens_read == 8 and answer.message.tool_calls


async def test_embeddings_send_the_same_body_and_read_the_same(mock):
    config = _config(mock.url, "openai/text-embedding-3-small")
    fast = FastPath(config)
    try:
        deployment = config.aliases["a"].deployments[0]
        target = fast.target(deployment)
        assert target is not None
        mock.script("text-embedding-3-small", Reply())
        reference = await llm.embed(deployment, ["a b", "c d e"], 4, 10)
        body = mock.seen[-1].body
        got = await fast.embed(target, ["a b", "c d e"], 4, 10)
        assert mock.seen[-1].body == body
        assert got == reference
    finally:
        await fast.aclose()


# ---------------------------------------------------------------- same failure, same error

TOO_LONG = "This model's maximum context length is 4096 tokens, you asked for 9000."


STATUS_FAILURES = [
    Reply(status=400),
    Reply(status=400, message=TOO_LONG),
    Reply(status=401),
    Reply(status=403),
    Reply(status=404),
    Reply(status=413),
    Reply(status=422),
    Reply(status=429, headers={"retry-after": "2"}),
    Reply(status=500),
    Reply(status=503),
]
#: Bodies that are no answer (a 200 that is not JSON, no choice, no content): answers only.
MALFORMED = [
    Reply(raw=b"{not json"),
    Reply(raw=b'{"id": "x", "choices": []}'),
    Reply(raw=b'{"id": "x", "choices": [{"index": 0, "message": {"role": "assistant"}}]}'),
]


def _case(reply: Reply) -> str:
    return f"{reply.status}" + (" raw" if reply.raw else "") + (" context" if reply.message else "")


@pytest.mark.parametrize(
    ("streaming", "reply"),
    [
        *[pytest.param(False, r, id=f"answer {_case(r)}") for r in STATUS_FAILURES + MALFORMED],
        *[pytest.param(True, r, id=f"stream {_case(r)}") for r in STATUS_FAILURES],
    ],
)
async def test_a_failure_becomes_the_same_mesh_error(config, fast, mock, streaming, reply):
    deployment, target = _only(config, fast)
    messages, params = _parts(REQUESTS["plain"])
    mock.script("gpt-4o-mini", reply)
    errors: list[MeshError] = []
    calls = (
        (
            lambda: llm.open_stream(deployment, messages, params, 10),
            lambda: fast.open_stream(target, fast.body(target, messages, params) or {}, 10),
        )
        if streaming
        else (
            lambda: _answer(llm.complete(deployment, messages, params, 10)),
            lambda: fast.complete(target, fast.body(target, messages, params) or {}, 10),
        )
    )
    for call in calls:
        with pytest.raises(Exception) as caught:
            await call()
        errors.append(map_error(caught.value, (KEY,)))
    reference, got = errors
    assert (got.code, got.details) == (reference.code, reference.details)
    # The same handling: retried, falls back, cools the deployment, context-window fallback.
    assert _handling(got) == _handling(reference)
    assert KEY not in got.message and "127.0.0.1" not in str(got.details)


def _handling(error: MeshError) -> tuple[bool, ...]:
    return (
        retryable(error),
        falls_back(error),
        counts_against_deployment(error),
        isinstance(error, ContextWindowExceeded),
    )


async def _answer(pending: Any) -> llm.Answer:
    return llm.answer_of(await pending)


@pytest.mark.parametrize("streaming", [False, True], ids=["answer", "stream"])
async def test_a_slow_provider_times_out_on_both_paths(config, fast, mock, streaming):
    deployment, target = _only(config, fast)
    messages, params = _parts(REQUESTS["plain"])
    mock.script("gpt-4o-mini", Reply(delay=2.0))
    body = fast.body(target, messages, params) or {}
    calls = (
        (
            lambda: llm.open_stream(deployment, messages, params, 0.3),
            lambda: fast.open_stream(target, body, 0.3),
        )
        if streaming
        else (
            lambda: llm.complete(deployment, messages, params, 0.3),
            lambda: fast.complete(target, body, 0.3),
        )
    )
    for call in calls:
        with pytest.raises(Exception) as caught:
            await call()
        assert map_error(caught.value).code == "timeout"


async def test_a_provider_that_is_down_is_unavailable_on_both_paths(mock):
    from mesh.infra import free_port

    config = _config(f"http://127.0.0.1:{free_port()}/v1")
    fast = FastPath(config)
    try:
        deployment = config.aliases["a"].deployments[0]
        target = fast.target(deployment)
        assert target is not None
        messages, params = _parts(REQUESTS["plain"])
        for call in (
            lambda: llm.complete(deployment, messages, params, 5),
            lambda: fast.complete(target, fast.body(target, messages, params) or {}, 5),
        ):
            with pytest.raises(Exception) as caught:
                await call()
            assert map_error(caught.value).code == "unavailable"
    finally:
        await fast.aclose()


# ---------------------------------------------------------------- the switch


@pytest.mark.parametrize(("value", "on"), [(None, True), ("false", False), ("true", True)])
def test_gateway_fast_path_switches_the_fast_path(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv("GATEWAY_FAST_PATH", raising=False)
    else:
        monkeypatch.setenv("GATEWAY_FAST_PATH", value)
    assert GatewaySettings().fast_path is on
