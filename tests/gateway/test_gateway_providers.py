"""Gateway Service against a scripted OpenAI-compatible server on 127.0.0.1: answers, tool
calls, streams, errors, retries, fallbacks, usage, cost, events, cache.

Every test runs twice: through the fast path (direct HTTP, workers/gateway/fast.py) and
through litellm (``fast_path=False``, the reference), against the same provider table."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import yaml

from bus.client import Client
from bus.context import new_context
from bus.errors import (
    InvalidRequest,
    NotFound,
    RateLimited,
    Timeout,
    Unavailable,
    UpstreamError,
)
from mesh.infra import free_port
from schemas.gateway import (
    LLMOPS_SUBJECT,
    EmbedResponse,
    GenerateChunk,
    GenerateResponse,
    ModelsResponse,
)
from tests.gateway_support import EventTap, serve_gateway
from tests.openai_mock import MockOpenAI, Reply
from workers.gateway.background import Counters
from workers.gateway.config import load_config
from workers.gateway.llm import litellm
from workers.gateway.service import Gateway

pytestmark = pytest.mark.usefixtures("cache_worker")

SECRET = "sk-mock-secret-0123456789"
IN_PRICE, OUT_PRICE = 1e-6, 2e-6
HI = [{"role": "user", "content": "hi"}]


def _config(url: str, dead_url: str) -> dict:
    def entry(alias: str, model: str, **params: object) -> dict:
        info = params.pop("model_info", None)
        out: dict = {
            "model_name": alias,
            "litellm_params": {
                "model": f"openai/{model}",
                "api_base": url,
                "api_key": "os.environ/MOCK_OPENAI_KEY",
                **params,
            },
        }
        if info:
            out["model_info"] = info
        return out

    prices = {"input_cost_per_token": IN_PRICE, "output_cost_per_token": OUT_PRICE}
    return {
        "model_list": [
            entry("chat", "m-chat", model_info={"mode": "chat", **prices}),
            entry("priced", "gpt-4o-mini"),
            entry("tools", "m-tools"),
            entry("flaky", "m-flaky"),
            entry("limited", "m-429"),
            entry("throttled", "m-429-events"),
            entry("broken", "m-500"),
            entry("refused", "m-401"),
            entry("rejected", "m-400"),
            entry("malformed", "m-malformed"),
            entry("empty", "m-empty"),
            entry("slow", "m-slow", timeout=0.3),
            entry("hang", "m-hang"),
            entry("primary", "m-primary"),
            entry("backup", "m-backup", model_info=prices),
            entry("cooling", "m-cooling"),
            entry("stream", "m-stream"),
            entry("dropped", "m-drop"),
            entry("small", "m-small"),
            entry("large", "m-large"),
            entry("dead", "m-dead", api_base=dead_url),
            # Two deployments, one of them down: the alias still answers.
            entry("pair", "m-pair", api_base=dead_url),
            entry("pair", "m-pair"),
            entry("embed", "m-embed", model_info={"mode": "embedding", **prices}),
            # A self-hosted model litellm does not know, with no model_info.mode.
            entry("selfhosted", "my-own-embedder"),
        ],
        "router_settings": {
            "num_retries": 2,
            "allowed_fails": 5,
            "cooldown_time": 30,
            "fallbacks": [{"primary": ["backup"]}],
            "context_window_fallbacks": [{"small": ["large"]}],
        },
        "gateway_settings": {"default_chat_model": "chat"},
    }


@pytest.fixture(scope="module", params=["fast", "litellm"])
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def mock(path: str) -> Iterator[MockOpenAI]:  # one per path: call counts start from zero
    server = MockOpenAI()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def gateway(env, mock, path, tmp_path_factory) -> AsyncIterator[Gateway]:
    models = tmp_path_factory.mktemp("gateway") / "models.yaml"
    models.write_text(yaml.safe_dump(_config(mock.url, f"http://127.0.0.1:{free_port()}/v1")))
    os.environ["MOCK_OPENAI_KEY"] = SECRET
    try:
        config = load_config(str(models))
    finally:
        del os.environ["MOCK_OPENAI_KEY"]
    async with serve_gateway(config, env, fast_path=path == "fast") as gw:
        yield gw


def ctx(tenant: str = "acme", timeout: float = 20.0):
    return new_context(tenant, user="u1", timeout=timeout)


async def generate(client: Client, payload: dict, c=None) -> GenerateResponse:
    return await client.request("gateway.generate.request", payload, c or ctx(), GenerateResponse)


async def stream(client: Client, payload: dict, c=None) -> list[GenerateChunk]:
    return [
        chunk
        async for chunk in client.request_stream(
            "gateway.stream.request", payload, c or ctx(), GenerateChunk
        )
    ]


# ---------------------------------------------------------------- answers, usage, cost


async def test_generate_answers_with_usage_and_custom_price(gateway, client, mock):
    mock.script("m-chat", Reply(content="Hello there.", usage=(12, 3)))
    out = await generate(client, {"model": "chat", "messages": HI})
    assert out.model == "chat"
    assert out.message.content == "Hello there."
    assert out.finish_reason == "stop"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (
        12,
        3,
        15,
    )
    assert out.cost == pytest.approx(12 * IN_PRICE + 3 * OUT_PRICE)
    assert out.cached is False


async def test_the_path_under_test_is_the_one_that_called_the_provider(gateway, client, mock, path):
    mock.script("m-chat", Reply())
    await generate(client, {"model": "chat", "messages": HI})
    headers = mock.calls("m-chat")[-1].headers
    # The OpenAI SDK (inside litellm) announces itself; the fast path's aiohttp does not.
    assert ("x-stainless-lang" in headers) is (path == "litellm")
    assert headers["authorization"] == f"Bearer {SECRET}"


async def test_model_omitted_uses_the_configured_default(gateway, client, mock):
    mock.script("m-chat", Reply(content="default"))
    out = await generate(client, {"messages": HI})
    assert (out.model, out.message.content) == ("chat", "default")


async def test_cost_comes_from_litellm_price_map_without_custom_prices(gateway, client, mock):
    mock.script("gpt-4o-mini", Reply(usage=(1000, 500)))
    out = await generate(client, {"model": "priced", "messages": HI})
    info = litellm.get_model_info("openai/gpt-4o-mini")
    expected = 1000 * info["input_cost_per_token"] + 500 * info["output_cost_per_token"]
    assert out.cost == pytest.approx(expected) and out.cost > 0


async def test_cached_prompt_tokens_are_priced_as_litellm_prices_them(gateway, client, mock):
    mock.script("gpt-4o-mini", Reply(usage=(1000, 500), cached=400))
    out = await generate(client, {"model": "priced", "messages": HI})
    assert (out.usage.prompt_tokens, out.usage.cached_tokens_read) == (1000, 400)
    usage = litellm.Usage(
        prompt_tokens=1000,
        completion_tokens=500,
        total_tokens=1500,
        prompt_tokens_details={"cached_tokens": 400},
    )
    prompt_cost, completion_cost = litellm.cost_per_token(
        model="gpt-4o-mini", custom_llm_provider="openai", usage_object=usage
    )
    assert out.cost == pytest.approx(prompt_cost + completion_cost)
    uncached = litellm.get_model_info("openai/gpt-4o-mini")["input_cost_per_token"] * 1000
    assert prompt_cost < uncached  # the cache rate is really applied


async def test_request_parameters_reach_the_provider(gateway, client, mock):
    mock.script("m-chat", Reply())
    await generate(
        client,
        {
            "model": "chat",
            "messages": [{"role": "system", "content": "be brief"}, *HI],
            "temperature": 0.3,
            "max_tokens": 7,
            "stop": ["\n"],
            "seed": 42,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": {"type": "object"}},
            },
        },
    )
    seen = mock.calls("m-chat")[-1]
    body = seen.body
    assert (body["temperature"], body["max_tokens"], body["stop"], body["seed"]) == (
        0.3,
        7,
        ["\n"],
        42,
    )
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert seen.headers["authorization"] == f"Bearer {SECRET}"


async def test_tool_calls_come_back(gateway, client, mock):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Pune"}'},
    }
    mock.script("m-tools", Reply(content=None, tool_calls=[call], finish_reason="tool_calls"))
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    out = await generate(
        client, {"model": "tools", "messages": HI, "tools": [tool], "tool_choice": "auto"}
    )
    assert out.finish_reason == "tool_calls"
    assert out.message.tool_calls is not None
    (tc,) = out.message.tool_calls
    assert (tc.id, tc.function.name, tc.function.arguments) == (
        "call_1",
        "get_weather",
        '{"city": "Pune"}',
    )
    assert mock.calls("m-tools")[-1].body["tools"][0]["function"]["name"] == "get_weather"


# ---------------------------------------------------------------- streaming


async def test_stream_yields_deltas_then_usage_and_cost(gateway, client, mock):
    mock.script("m-stream", Reply(content="one two three", usage=(4, 3)))
    chunks = await stream(client, {"model": "stream", "messages": HI})
    text = "".join(c.delta.content or "" for c in chunks)
    assert text == "one two three"
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        4,
        3,
    )
    assert last.cost == 0.0  # no price known for this mock model
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_stream_carries_tool_call_deltas(gateway, client, mock):
    call = {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    mock.script(
        "m-stream", Reply(content=None, pieces=[], tool_calls=[call], finish_reason="tool_calls")
    )
    chunks = await stream(client, {"model": "stream", "messages": HI})
    calls = [tc for c in chunks for tc in c.delta.tool_calls or []]
    assert calls and calls[0].id == "call_9" and calls[0].function.name == "f"
    assert chunks[-1].finish_reason == "tool_calls"


async def test_stream_broken_midway_ends_with_an_error_and_an_event(gateway, client, env, mock):
    mock.script("m-drop", Reply(content="a b c d e f", stream_error_after=2))
    c = ctx()
    got: list[GenerateChunk] = []
    async with EventTap(env) as tap:
        with pytest.raises((UpstreamError, Unavailable)):
            async for chunk in client.request_stream(
                "gateway.stream.request", {"model": "dropped", "messages": HI}, c, GenerateChunk
            ):
                got.append(chunk)
        event = await tap.find(c.correlation_id)
    assert "".join(x.delta.content or "" for x in got) == "a b"
    assert event.status == "error" and event.error_code in ("upstream_error", "unavailable")


async def test_stream_error_before_output_is_an_error_answer(gateway, client, mock):
    mock.script("m-400", Reply(status=400))
    with pytest.raises(InvalidRequest):
        await stream(client, {"model": "rejected", "messages": HI})


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("alias", "model", "reply", "error"),
    [
        ("limited", "m-429", Reply(status=429), RateLimited),
        ("broken", "m-500", Reply(status=500), UpstreamError),
        ("refused", "m-401", Reply(status=401), UpstreamError),
        ("rejected", "m-400", Reply(status=400), InvalidRequest),
        ("malformed", "m-malformed", Reply(raw=b"{not json"), UpstreamError),
        ("empty", "m-empty", Reply(raw=b'{"id": "x", "choices": []}'), UpstreamError),
        ("slow", "m-slow", Reply(delay=2.0), Timeout),
    ],
)
async def test_provider_failures_map_to_the_error_contract(
    gateway, client, mock, alias, model, reply, error
):
    mock.script(model, reply)
    with pytest.raises(error) as caught:
        await generate(client, {"model": alias, "messages": HI})
    assert SECRET not in caught.value.message and "127.0.0.1" not in str(caught.value.details)


async def test_retryable_failures_are_retried_and_bad_requests_are_not(gateway, client, mock):
    mock.script("m-400", Reply(status=400))
    before = len(mock.calls("m-400"))
    with pytest.raises(InvalidRequest):
        await generate(client, {"model": "rejected", "messages": HI})
    assert len(mock.calls("m-400")) - before == 1
    mock.script("m-flaky", Reply(status=500), Reply(status=503), Reply(content="third time"))
    out = await generate(client, {"model": "flaky", "messages": HI})
    assert out.message.content == "third time"
    assert len(mock.calls("m-flaky")) == 3


async def test_connection_refused_is_unavailable(gateway, client):
    with pytest.raises(Unavailable):
        await generate(client, {"model": "dead", "messages": HI})


async def test_deadline_gives_timeout_while_the_provider_hangs(gateway, client, mock):
    mock.script("m-hang", Reply(delay=10.0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Timeout):
        await generate(client, {"model": "hang", "messages": HI}, ctx(timeout=1.0))
    assert loop.time() - started < 5.0


async def test_fallback_takes_over_when_the_primary_fails(gateway, client, mock):
    mock.script("m-primary", Reply(status=500))
    mock.script("m-backup", Reply(content="from backup", usage=(10, 10)))
    out = await generate(client, {"model": "primary", "messages": HI})
    assert out.model == "backup"  # the alias that answered
    assert out.message.content == "from backup"
    assert out.cost == pytest.approx(10 * IN_PRICE + 10 * OUT_PRICE)  # the backup's prices


async def test_a_prompt_too_long_goes_to_the_context_window_fallback(gateway, client, mock):
    too_long = "This model's maximum context length is 4096 tokens, you asked for 9000."
    mock.script("m-small", Reply(status=400, message=too_long))
    mock.script("m-large", Reply(content="from the large model"))
    out = await generate(client, {"model": "small", "messages": HI})
    assert (out.model, out.message.content) == ("large", "from the large model")
    assert len(mock.calls("m-small")) == 1  # a context error is not retried


async def test_a_deployment_that_is_down_is_skipped(gateway, client, mock):
    mock.script("m-pair", Reply(content="pair answered"))
    for _ in range(4):
        out = await generate(client, {"model": "pair", "messages": HI})
        assert out.message.content == "pair answered"


async def test_a_failing_deployment_cools_down_and_is_not_called(gateway, client, mock):
    mock.script("m-cooling", Reply(status=500))
    for _ in range(2):  # 3 + 2 attempts: the fifth failure opens the circuit
        with pytest.raises(UpstreamError):
            await generate(client, {"model": "cooling", "messages": HI})
    calls = len(mock.calls("m-cooling"))
    with pytest.raises(Unavailable):
        await generate(client, {"model": "cooling", "messages": HI})
    assert len(mock.calls("m-cooling")) == calls


async def test_unknown_alias_is_not_found(gateway, client):
    with pytest.raises(NotFound):
        await generate(client, {"model": "gpt-nope", "messages": HI})


@pytest.mark.parametrize(
    "extra",
    [
        {"api_base": "http://169.254.169.254/"},
        {"api_key": "sk-mine"},
        {"extra_headers": {"x": "y"}},
        {"base_url": "http://evil/"},
    ],
)
async def test_requests_cannot_set_provider_settings(gateway, client, extra):
    with pytest.raises(InvalidRequest):
        await generate(client, {"model": "chat", "messages": HI, **extra})


async def test_models_lists_aliases_without_secrets(gateway, client, mock):
    out = await client.request("gateway.models.request", {}, ctx(), ModelsResponse)
    by_alias = {m.alias: m for m in out.models}
    assert by_alias["chat"].default and by_alias["chat"].mode == "chat"
    assert by_alias["chat"].input_cost_per_token == IN_PRICE
    assert by_alias["embed"].mode == "embedding"
    assert by_alias["primary"].fallbacks == ["backup"]
    assert by_alias["priced"].context_window and by_alias["priced"].input_cost_per_token > 0
    text = out.model_dump_json()
    assert SECRET not in text and mock.url not in text and "api_base" not in text


# ---------------------------------------------------------------- embeddings


async def test_embed_returns_vectors_usage_and_cost(gateway, client, mock):
    mock.script("m-embed", Reply())
    out = await client.request(
        "gateway.embed.request",
        {"model": "embed", "texts": ["a b", "c d e"], "dimensions": 4},
        ctx(),
        EmbedResponse,
    )
    assert len(out.vectors) == 2 and all(len(v) == 4 for v in out.vectors)
    assert out.usage.prompt_tokens == 5
    assert out.cost == pytest.approx(5 * IN_PRICE)
    assert mock.calls("m-embed")[-1].body["dimensions"] == 4


async def test_chat_alias_cannot_embed_and_the_error_says_how_to_declare_the_mode(gateway, client):
    with pytest.raises(InvalidRequest, match="model_info: {mode: embedding}"):
        await client.request("gateway.embed.request", {"model": "chat", "texts": ["x"]}, ctx())


async def test_an_alias_of_unknown_mode_serves_embeddings_as_the_litellm_proxy_does(
    gateway, client, mock
):
    mock.script("my-own-embedder", Reply())
    out = await client.request(
        "gateway.embed.request", {"model": "selfhosted", "texts": ["a b"]}, ctx(), EmbedResponse
    )
    assert len(out.vectors) == 1 and mock.calls("my-own-embedder")


# ---------------------------------------------------------------- events


async def test_success_publishes_an_llmops_event(gateway, client, env, mock):
    mock.script("m-chat", Reply(usage=(7, 2)))
    c = ctx()
    async with EventTap(env) as tap:
        await generate(client, {"model": "chat", "messages": HI}, c)
        event = await tap.find(c.correlation_id)
    assert (event.tenant, event.user, event.operation, event.status) == (
        "acme",
        "u1",
        "generate",
        "ok",
    )
    assert (event.model, event.provider, event.tokens_in, event.tokens_out) == (
        "chat",
        "openai",
        7,
        2,
    )
    assert event.cost == pytest.approx(7 * IN_PRICE + 2 * OUT_PRICE)
    assert event.latency_ms > 0 and event.error_code is None and not event.cache_hit
    assert event.prompt is None and event.completion is None  # content is off by default


async def test_events_carry_content_only_when_configured(gateway, client, env, mock):
    mock.script("m-chat", Reply(content="the secret answer"))
    c = ctx()
    gateway.log_content = True
    try:
        async with EventTap(env) as tap:
            await generate(client, {"model": "chat", "messages": HI}, c)
            event = await tap.find(c.correlation_id)
    finally:
        gateway.log_content = False
    assert event.prompt == HI
    assert event.completion == {"role": "assistant", "content": "the secret answer"}


async def test_failure_publishes_an_llmops_event_with_its_error_code(gateway, client, env, mock):
    mock.script("m-429-events", Reply(status=429))
    c = ctx()
    async with EventTap(env) as tap:
        with pytest.raises(RateLimited):
            await generate(client, {"model": "throttled", "messages": HI}, c)
        event = await tap.find(c.correlation_id)
    assert (event.status, event.error_code, event.attempts) == ("error", "rate_limited", 3)


async def test_stream_event_has_time_to_first_token(gateway, client, env, mock):
    mock.script("m-stream", Reply(content="a b c"))
    c = ctx()
    async with EventTap(env) as tap:
        await stream(client, {"model": "stream", "messages": HI}, c)
        event = await tap.find(c.correlation_id)
    assert event.operation == "stream" and event.status == "ok"
    assert event.ttft_ms is not None and 0 < event.ttft_ms <= event.latency_ms


async def test_events_that_cannot_be_published_never_fail_the_call(gateway, client, mock):
    mock.script("m-chat", Reply(content="still answered"))
    counters = gateway.events.background.counters.setdefault("llmops_event", Counters())
    failed = counters.failed
    gateway.events.subject = "events.nostream.operation"  # no stream takes it: no ack
    try:
        out = await generate(client, {"model": "chat", "messages": HI})
        assert out.message.content == "still answered"
        await asyncio.wait_for(gateway.events.background.idle(), 10)
        assert counters.failed == failed + 1
    finally:
        gateway.events.subject = LLMOPS_SUBJECT


# ---------------------------------------------------------------- cache


async def _until_cached(client: Client, payload: dict, tenant: str) -> GenerateResponse:
    for _ in range(50):  # the store happens after the first answer, in the background
        out = await generate(client, payload, ctx(tenant))
        if out.cached:
            return out
        await asyncio.sleep(0.05)
    raise AssertionError("never cached")


async def test_deterministic_call_is_cached_per_tenant(gateway, client, mock, path):
    mock.script("m-chat", Reply(content="cache me", usage=(5, 5)))
    payload = {
        "model": "chat",
        "messages": [{"role": "user", "content": "cache?"}],
        "temperature": 0,
    }
    first = await generate(client, payload, ctx(f"tenant-a-{path}"))
    assert not first.cached and first.cost > 0
    again = await _until_cached(client, payload, f"tenant-a-{path}")
    assert again.message.content == "cache me" and again.cost == 0.0
    assert again.usage == first.usage
    calls = len(mock.calls("m-chat"))
    other = await generate(client, payload, ctx(f"tenant-b-{path}"))
    assert not other.cached  # never across tenants
    assert len(mock.calls("m-chat")) == calls + 1


async def test_cache_hit_publishes_a_cache_hit_event(gateway, client, env, mock, path):
    mock.script("m-chat", Reply(content="hit me"))
    payload = {"model": "chat", "messages": [{"role": "user", "content": "hit?"}], "temperature": 0}
    await generate(client, payload, ctx(f"tenant-e-{path}"))
    async with EventTap(env) as tap:
        out = await _until_cached(client, payload, f"tenant-e-{path}")
        assert out.cached
        c = ctx(f"tenant-e-{path}")
        await generate(client, payload, c)
        event = await tap.find(c.correlation_id)
    assert event.cache_hit and event.cost == 0.0 and event.status == "ok"


async def test_sampling_calls_are_not_cached_unless_asked(gateway, client, mock, path):
    mock.script("m-chat", Reply(content="random"))
    payload = {
        "model": "chat",
        "messages": [{"role": "user", "content": "warm?"}],
        "temperature": 1,
    }
    calls = len(mock.calls("m-chat"))
    for _ in range(3):
        assert not (await generate(client, payload, ctx(f"tenant-c-{path}"))).cached
    assert len(mock.calls("m-chat")) == calls + 3
    opted = {**payload, "cache": {"ttl": 60}}
    await generate(client, opted, ctx(f"tenant-c-{path}"))
    assert (await _until_cached(client, opted, f"tenant-c-{path}")).cached


async def test_no_cache_skips_the_read(gateway, client, mock, path):
    mock.script("m-chat", Reply(content="fresh"))
    payload = {
        "model": "chat",
        "messages": [{"role": "user", "content": "fresh?"}],
        "temperature": 0,
    }
    await generate(client, payload, ctx(f"tenant-d-{path}"))
    await _until_cached(client, payload, f"tenant-d-{path}")
    out = await generate(client, {**payload, "cache": {"no_cache": True}}, ctx(f"tenant-d-{path}"))
    assert not out.cached


async def test_stream_replays_a_cached_answer(gateway, client, mock, path):
    mock.script("m-stream", Reply(content="streamed and cached", usage=(3, 3)))
    payload = {
        "model": "stream",
        "messages": [{"role": "user", "content": "s?"}],
        "temperature": 0,
    }
    first = await stream(client, payload, ctx(f"tenant-s-{path}"))
    for _ in range(50):
        chunks = await stream(client, payload, ctx(f"tenant-s-{path}"))
        if chunks[-1].cached:
            break
        await asyncio.sleep(0.05)
    assert chunks[-1].cached and chunks[-1].usage == first[-1].usage
    assert "".join(c.delta.content or "" for c in chunks) == "streamed and cached"


async def test_cache_down_still_answers(gateway, env, mock):
    # A client whose cache calls go nowhere: the breaker and errors must not fail the call.
    mock.script("m-chat", Reply(content="no cache"))
    gateway.cache.client = Client(env.nc)
    real = gateway.cache.client.request

    async def broken(subject, *args, **kwargs):
        if subject.startswith("cache."):
            subject = "nobody.listens.request"
        return await real(subject, *args, **kwargs)

    gateway.cache.client.request = broken  # type: ignore[method-assign]
    try:
        payload = {"model": "chat", "messages": HI, "temperature": 0}
        errors = gateway.cache.errors
        out = await generate(Client(env.nc), payload)
        assert out.message.content == "no cache" and not out.cached
        assert gateway.cache.errors == errors + 1
    finally:
        gateway.cache.client = Client(env.nc)
