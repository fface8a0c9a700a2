"""The official ``openai`` client against the real bridge's ``/v1`` routes: chat (plain,
streamed), embeddings, models, errors in OpenAI's shape, the bridge's JWT, rate limits and
correlation ids, and a client that leaves mid-stream."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import openai
import pytest
import yaml

from gateway_bridge.app import create_app
from tests.bridge_support import auth, bridge_settings, hs_token, http, serving
from tests.gateway_support import serve_gateway
from tests.openai_mock import Reply
from workers.gateway.config import load_config

TENANT = "openai-edge"


@pytest.fixture(scope="module")
def app(settings):
    return create_app(bridge_settings(settings))


@pytest.fixture(scope="module")
async def base_url(app, env, mock, tmp_path_factory) -> AsyncIterator[str]:
    path = tmp_path_factory.mktemp("openai") / "models.yaml"
    models = {
        "model_list": [
            {
                "model_name": "chat",
                "litellm_params": {
                    "model": "openai/m-edge",
                    "api_base": mock.url,
                    "api_key": "os.environ/EDGE_KEY",
                },
            },
            {"model_name": "local-embed", "litellm_params": {"model": "local/minilm-l6-v2"}},
        ]
    }
    path.write_text(yaml.safe_dump(models))
    os.environ["EDGE_KEY"] = "sk-edge"
    try:
        config = load_config(str(path))
    finally:
        del os.environ["EDGE_KEY"]
    async with serve_gateway(config, env), serving(app) as url:
        yield url


@pytest.fixture
async def oai(base_url) -> AsyncIterator[openai.AsyncOpenAI]:
    token = hs_token(tenant=TENANT, user="openai-client")
    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=token, max_retries=0) as c:
        yield c


async def test_openai_client_chat(oai, mock):
    mock.script("m-edge", Reply(content="Hi from the gateway.", usage=(6, 4)))
    out = await oai.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], temperature=0.5
    )
    assert out.choices[0].message.content == "Hi from the gateway."
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.total_tokens == 10
    assert out.model == "chat"


async def test_openai_client_streaming_chat(oai, mock):
    mock.script("m-edge", Reply(content="streaming works fine", usage=(5, 3)))
    stream = await oai.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text) == "streaming works fine"
    assert finish == "stop"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 3)


async def test_openai_client_tool_calls(oai, mock):
    call = {"id": "call_7", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    mock.script("m-edge", Reply(content=None, tool_calls=[call], finish_reason="tool_calls"))
    out = await oai.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "call f"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    tc = out.choices[0].message.tool_calls[0]
    assert (tc.id, tc.function.name) == ("call_7", "f")


async def test_openai_client_embeddings(oai):
    # The client asks for base64 by default and decodes it.
    out = await oai.embeddings.create(model="local-embed", input=["a cat", "a kitten"])
    assert len(out.data) == 2 and len(out.data[0].embedding) == 384
    floats = await oai.embeddings.create(
        model="local-embed", input="a cat", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(out.data[0].embedding, abs=1e-6)


async def test_openai_client_models(oai):
    out = await oai.models.list()
    assert {m.id for m in out.data} == {"chat", "local-embed"}


async def test_a_request_without_a_valid_token_is_an_openai_authentication_error(base_url):
    async with openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key="not-a-jwt", max_retries=0
    ) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            await bad.models.list()
    assert caught.value.response.headers["www-authenticate"].startswith("Bearer")
    assert caught.value.body["type"] == "authentication_error"


async def test_errors_carry_openai_shape_and_the_bridge_ids(base_url):
    async with http(base_url) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "chat", "messages": [], "frequency_penalty": 1},
            headers={**auth(hs_token(tenant=TENANT)), "X-Correlation-ID": "corr-openai-1"},
        )
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "message": "unsupported parameter: frequency_penalty",
            "type": "invalid_request_error",
            "param": "frequency_penalty",
            "code": "invalid_request",
        }
    }
    assert r.headers["x-correlation-id"] == "corr-openai-1"
    assert r.headers["x-request-id"]


async def test_the_bridge_body_limit_applies_to_openai_routes(settings, env):
    app = create_app(bridge_settings(settings, bridge_max_body_bytes=1024))
    async with serving(app) as url, http(url) as c:
        big = {"model": "chat", "messages": [{"role": "user", "content": "x" * 4096}]}
        r = await c.post("/v1/chat/completions", json=big, headers=auth(hs_token()))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_openai_routes_share_the_bridge_rate_limit(settings, env, base_url):
    app = create_app(bridge_settings(settings, rate_limit_user="2/60"))
    token = hs_token(tenant=TENANT, user="limited-" + os.urandom(4).hex())
    async with (
        serving(app) as url,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0) as client,
    ):
        await client.models.list()
        await client.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            await client.models.list()
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.response.headers["ratelimit-remaining"] == "0"


async def test_openai_routes_are_measured_by_route_template(base_url, oai):
    await oai.models.list()
    async with http(base_url) as c:
        text = (await c.get("/metrics")).text
    assert 'route="/v1/models"' in text


async def test_client_leaving_mid_stream_closes_the_bus_stream(app, base_url, mock):
    mock.script("m-edge", Reply(content="tick " * 400, every=0.05))
    nc = app.state.bridge.nc
    baseline = len(nc._subs)
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        http(base_url) as c,
        c.stream(
            "POST", "/v1/chat/completions", json=body, headers=auth(hs_token(tenant=TENANT))
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                break  # one chunk seen; now hang up
        assert len(nc._subs) == baseline + 1  # the stream's inbox subscription
    async with asyncio.timeout(5):  # the stream had ~20 s left to run
        while len(nc._subs) != baseline:
            await asyncio.sleep(0.02)
    assert app.state.bridge.metrics.in_flight._value.get() == 0


# Last: the 429 puts the provider deployment in the gateway's cooldown.
async def test_openai_client_sees_errors_as_its_own_types(oai, mock):
    with pytest.raises(openai.NotFoundError):
        await oai.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError):
        await oai.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], logit_bias={"1": 1}
        )
    mock.script("m-edge", Reply(status=429))
    with pytest.raises(openai.RateLimitError):
        await oai.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}]
        )
