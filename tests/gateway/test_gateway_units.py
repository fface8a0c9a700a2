"""Gateway pieces without servers: the model configuration, the background queue, the
cache key and policy, the error translation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from bus.errors import InvalidRequest, RateLimited, Timeout, Unavailable, UpstreamError
from schemas.gateway import GenerateRequest
from workers.gateway.background import Background, running
from workers.gateway.cache import cache_key, cache_policy
from workers.gateway.config import (
    DEFAULT_CHAT_ALIAS,
    DEFAULT_EMBED_ALIAS,
    ConfigError,
    load_config,
    parse_config,
)
from workers.gateway.errors import ContextWindowExceeded, map_error
from workers.gateway.llm import litellm


def _entry(alias: str, model: str, **params: object) -> dict:
    return {"model_name": alias, "litellm_params": {"model": model, **params}}


# ---------------------------------------------------------------- configuration


def test_no_configuration_means_the_local_models():
    config = load_config(None)
    assert (config.default_chat, config.default_embedding) == (
        DEFAULT_CHAT_ALIAS,
        DEFAULT_EMBED_ALIAS,
    )
    embed = config.aliases[DEFAULT_EMBED_ALIAS]
    assert (embed.mode, embed.dimensions, embed.provider) == ("embedding", 384, "local")


def test_secrets_resolve_from_the_environment_and_stay_out_of_reprs(monkeypatch):
    monkeypatch.setenv("UNIT_KEY", "sk-unit-secret-value")
    config = parse_config(
        {"model_list": [_entry("a", "openai/gpt-4o-mini", api_key="os.environ/UNIT_KEY")]}
    )
    deployment = config.aliases["a"].deployments[0]
    assert deployment.params["api_key"] == "sk-unit-secret-value"
    assert "sk-unit-secret-value" in config.secrets
    assert "sk-unit-secret-value" not in repr(config) + repr(deployment)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"model_list": [_entry("a", "openai/x", api_key="os.environ/NOPE_UNSET")]}, "NOPE_UNSET"),
        ({"model_list": [{"model_name": "a"}]}, "litellm_params.model"),
        ({"models": []}, "model_list"),
        (
            {
                "model_list": [_entry("a", "openai/x")],
                "router_settings": {"fallbacks": [{"a": ["ghost"]}]},
            },
            "ghost",
        ),
        (
            {
                "model_list": [
                    _entry("a", "openai/gpt-4o-mini"),
                    _entry("a", "openai/text-embedding-3-small"),
                ]
            },
            "mix modes",
        ),
        (
            {
                "model_list": [_entry("a", "openai/x")],
                "gateway_settings": {"default_embedding_model": "a"},
            },
            "not a embedding alias",
        ),
    ],
)
def test_bad_configurations_say_what_to_fix(raw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_config(raw)


def test_prices_come_from_config_else_the_litellm_map():
    config = parse_config(
        {
            "model_list": [
                _entry("custom", "openai/gpt-4o-mini", input_cost_per_token=1e-3),
                _entry("mapped", "openai/gpt-4o-mini"),
            ]
        }
    )
    info = litellm.get_model_info("openai/gpt-4o-mini")
    assert config.aliases["custom"].input_cost_per_token == 1e-3
    assert config.aliases["mapped"].input_cost_per_token == info["input_cost_per_token"]
    assert config.aliases["mapped"].cost(10, 10) == pytest.approx(
        10 * info["input_cost_per_token"] + 10 * info["output_cost_per_token"]
    )


def test_router_settings_and_litellm_settings_are_both_read():
    config = parse_config(
        {
            "model_list": [_entry("a", "openai/x"), _entry("b", "openai/y")],
            "litellm_settings": {"num_retries": 5, "fallbacks": [{"a": ["b"]}]},
            "router_settings": {"num_retries": 1, "cooldown_time": 9},
        }
    )
    assert (config.num_retries, config.cooldown) == (1, 9.0)  # router_settings wins
    assert config.aliases["a"].fallbacks == ("b",)


# ---------------------------------------------------------------- background


async def test_background_runs_jobs_counts_failures_and_drops_when_full():
    background = Background(max_pending=2, concurrency=1)
    gate = asyncio.Event()
    done: list[int] = []

    async def slow() -> None:
        await gate.wait()
        done.append(1)

    async def broken() -> None:
        raise RuntimeError("boom")

    async with running(background):
        assert background.submit("a", slow)
        assert background.submit("a", broken)
        assert not background.submit("a", slow)  # the queue is full: dropped, not waited for
        gate.set()
        await asyncio.wait_for(background.idle(), 5)
    counters = background.counters["a"]
    assert (counters.done, counters.failed, counters.dropped) == (1, 1, 1)
    assert done == [1]


async def test_background_finishes_pending_jobs_on_exit():
    background = Background()
    done: list[int] = []

    async def job() -> None:
        await asyncio.sleep(0.01)
        done.append(1)

    async with running(background):
        for _ in range(5):
            background.submit("a", job)
    assert len(done) == 5


# ---------------------------------------------------------------- cache key and policy


def _req(**kw: object) -> GenerateRequest:
    return GenerateRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **kw})


def test_cache_key_depends_on_tenant_alias_and_request_not_on_cache_settings():
    base = cache_key("t1", "a", _req(temperature=0))
    assert base == cache_key("t1", "a", _req(temperature=0, cache={"ttl": 5}))
    assert base != cache_key("t2", "a", _req(temperature=0))
    assert base != cache_key("t1", "b", _req(temperature=0))
    assert base != cache_key("t1", "a", _req(temperature=0, seed=1))


@pytest.mark.parametrize(
    ("kw", "policy"),
    [
        ({}, (False, False)),
        ({"temperature": 0.7}, (False, False)),
        ({"temperature": 0}, (True, True)),
        ({"temperature": 0.7, "cache": {}}, (True, True)),
        ({"temperature": 0, "cache": {"no_cache": True}}, (False, True)),
        ({"temperature": 0, "cache": {"no_store": True}}, (True, False)),
    ],
)
def test_cache_policy(kw, policy):
    assert cache_policy(_req(**kw)) == policy


# ---------------------------------------------------------------- errors


def test_error_translation_of_litellm_exceptions():
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(429, headers={"retry-after": "7"}, request=request)
    rate = litellm.RateLimitError("slow", "openai", "m", response=response)
    limited = map_error(rate)
    assert isinstance(limited, RateLimited) and limited.retry_after == 7.0
    window = litellm.ContextWindowExceededError("too long", "m", "openai")
    assert isinstance(map_error(window), ContextWindowExceeded)
    assert isinstance(map_error(litellm.Timeout("slow", "m", "openai")), Timeout)
    assert isinstance(map_error(ConnectionRefusedError()), Unavailable)
    assert isinstance(map_error(litellm.BadRequestError("no", "m", "openai")), InvalidRequest)
    assert isinstance(
        map_error(litellm.AuthenticationError("bad key", "openai", "m")), UpstreamError
    )


def test_error_details_are_scrubbed_of_secrets_and_urls():
    exc = litellm.BadRequestError(
        "key sk-abcdef123 rejected at https://internal.example/v1", "m", "openai"
    )
    error = map_error(exc, ("sk-abcdef123",))
    text = str(error.details)
    assert "sk-abcdef123" not in text and "internal.example" not in text


# ---------------------------------------------------------------- routes


def test_every_route_names_an_endpoint_of_the_worker():
    from schemas.gateway import ROUTES
    from workers.gateway.service import Gateway, build_worker

    gateway = Gateway(load_config(None), events=None, cache=None)  # type: ignore[arg-type]
    worker = build_worker(gateway)
    endpoints = {ep.op.subject: ep for ep in worker.endpoints}
    for route in ROUTES:
        ep = endpoints[route.subject]
        assert route.request is ep.request
        assert (route.streaming, route.idempotent) == (ep.streaming, ep.idempotent)
    assert {r.path for r in ROUTES} >= {
        "/api/v1/gateway/generate",
        "/api/v1/gateway/stream",
        "/api/v1/gateway/embed",
        "/api/v1/gateway/models",
    }


def test_a_realistic_litellm_proxy_config_loads_unchanged(monkeypatch):
    names = (
        "OPENAI_API_KEY AZURE_API_KEY ANTHROPIC_API_KEY AWS_ACCESS_KEY_ID "
        "AWS_SECRET_ACCESS_KEY VLLM_API_KEY REDIS_HOST LITELLM_MASTER_KEY"
    ).split()
    for name in names:
        monkeypatch.setenv(name, f"test-{name.lower()}-value")
    config = load_config(str(Path(__file__).parents[1] / "data" / "litellm_proxy_config.yaml"))
    assert set(config.aliases) == {
        "gpt-4o",
        "claude-sonnet",
        "bedrock-haiku",
        "llama-local",
        "vllm-embedder",
        "text-embedding-3-small",
    }
    gpt = config.aliases["gpt-4o"]
    assert [d.provider for d in gpt.deployments] == ["openai", "azure"]
    assert gpt.fallbacks == ("claude-sonnet",) and gpt.context_window_fallbacks == (
        "claude-sonnet",
    )
    assert config.aliases["text-embedding-3-small"].mode == "embedding"
    assert config.aliases["claude-sonnet"].mode == "chat"
    # Unknown to litellm and undeclared: served for whatever is asked, like the proxy.
    assert config.aliases["vllm-embedder"].mode_known is False
    assert (config.num_retries, config.timeout, config.cooldown) == (2, 30.0, 30.0)
    assert config.default_chat == "gpt-4o"
    assert config.default_embedding == "text-embedding-3-small"
    assert "test-openai_api_key-value" in config.secrets
    assert "test-openai_api_key-value" not in repr(config)
