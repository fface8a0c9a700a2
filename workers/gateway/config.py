"""The gateway's model table: LiteLLM proxy ``model_list`` YAML (``GATEWAY_MODELS``), or the
offline local defaults.

::

    model_list:
      - model_name: fast                      # the alias callers ask for
        litellm_params:
          model: openai/gpt-4o-mini           # litellm's provider/model
          api_base: https://api.openai.com/v1
          api_key: os.environ/OPENAI_API_KEY  # secrets only by reference
          timeout: 30                         # per attempt, always capped by the deadline
        model_info:
          input_cost_per_token: 0.00000015    # optional: overrides litellm's price map
      - model_name: fast                      # a second deployment of the same alias
        litellm_params: {model: azure/gpt-4o-mini, api_base: ..., api_key: os.environ/AZ}
    router_settings:                          # or litellm_settings, as in the proxy
      num_retries: 2
      timeout: 60
      allowed_fails: 3                        # consecutive failures that cool a deployment
      cooldown_time: 5                        # seconds
      fallbacks: [{fast: [local-chat]}]
      context_window_fallbacks: [{fast: [big]}]
      - model_name: whisper                   # speech to text (gateway.transcribe)
        litellm_params: {model: openai/whisper-1, api_key: os.environ/OPENAI_API_KEY}
        model_info: {mode: audio_transcription}
    gateway_settings:
      default_chat_model: fast
      default_embedding_model: local-embed
      default_transcription_model: whisper

Resolved secrets live only in :class:`Deployment.params`, whose ``repr`` hides them; they
are never logged, returned, or accepted from a request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from schemas.gateway import DEFAULT_CHAT_MODEL, DEFAULT_EMBED_MODEL
from workers.gateway import local

Mode = Literal["chat", "embedding", "audio_transcription"]
#: The litellm modes the gateway serves, as its own type.
_SERVED_MODES: dict[str, Mode] = {
    "chat": "chat",
    "embedding": "embedding",
    "audio_transcription": "audio_transcription",
}
MODES = tuple(_SERVED_MODES)

DEFAULT_CHAT_ALIAS = DEFAULT_CHAT_MODEL
DEFAULT_EMBED_ALIAS = DEFAULT_EMBED_MODEL
DEFAULT_NUM_RETRIES = 2
#: Per-attempt timeout when the configuration gives none (the deadline caps it anyway).
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_ALLOWED_FAILS = 3
DEFAULT_COOLDOWN_S = 5.0
_ENV_PREFIX = "os.environ/"

# litellm_params the gateway handles itself rather than passing to litellm.
_OWN_PARAMS = {
    "model",
    "timeout",
    "stream_timeout",
    "max_retries",
    "num_retries",
    "rpm",
    "tpm",
    "order",
    "weight",
    "input_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_token",
    "mock_response",
}


class ConfigError(ValueError):
    """The model configuration cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class Deployment:
    """One concrete model behind an alias."""

    alias: str
    model: str
    provider: str
    params: dict[str, Any] = field(repr=False)  # api_base, api_key, headers...: secrets
    timeout: float | None = None
    stream_timeout: float | None = None

    @property
    def local(self) -> bool:
        return self.provider == local.PROVIDER


@dataclass(frozen=True)
class Alias:
    name: str
    mode: Mode
    deployments: tuple[Deployment, ...]
    mode_known: bool = True
    """False when neither ``model_info.mode`` nor litellm's model map says what the model
    does (a self-hosted model behind an OpenAI-compatible server). Such an alias is
    listed as chat but, as in the LiteLLM proxy, serves whichever operation is asked."""
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    cache_read_input_token_cost: float | None = None
    cache_creation_input_token_cost: float | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    dimensions: int | None = None
    fallbacks: tuple[str, ...] = ()
    context_window_fallbacks: tuple[str, ...] = ()

    @property
    def provider(self) -> str:
        return self.deployments[0].provider

    def cost(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_read: int | None = None,
        cached_write: int | None = None,
    ) -> float:
        """USD of one call, each token kind at its own price: ``prompt_tokens`` includes
        the cached ones, which are priced at the cache read/creation rates (litellm's
        names); a rate the price map lacks falls back to the input price."""
        read, write = cached_read or 0, cached_write or 0
        uncached = max(0, prompt_tokens - read - write)
        read_rate = self.cache_read_input_token_cost
        write_rate = self.cache_creation_input_token_cost
        return (
            uncached * self.input_cost_per_token
            + read * (self.input_cost_per_token if read_rate is None else read_rate)
            + write * (self.input_cost_per_token if write_rate is None else write_rate)
            + completion_tokens * self.output_cost_per_token
        )


@dataclass(frozen=True)
class GatewayConfig:
    aliases: dict[str, Alias]
    default_chat: str | None
    default_embedding: str | None
    num_retries: int = DEFAULT_NUM_RETRIES
    timeout: float = DEFAULT_TIMEOUT_S
    allowed_fails: int = DEFAULT_ALLOWED_FAILS
    cooldown: float = DEFAULT_COOLDOWN_S
    secrets: tuple[str, ...] = field(default=(), repr=False)
    """Every resolved secret value, so error messages can be scrubbed of them."""
    default_transcription: str | None = None

    def default_for(self, mode: Mode) -> str | None:
        if mode == "audio_transcription":
            return self.default_transcription
        return self.default_chat if mode == "chat" else self.default_embedding


def load_config(path: str | None) -> GatewayConfig:
    """The configuration from ``path``, or the local defaults when it is unset."""
    if not path:
        return default_config()
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"GATEWAY_MODELS={path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"GATEWAY_MODELS={path}: not valid YAML ({exc})") from None
    return parse_config(raw, source=path)


def default_config() -> GatewayConfig:
    """Offline defaults: SmolLM2 for chat, MiniLM for embeddings, both local."""
    return parse_config(
        {
            "model_list": [
                {
                    "model_name": DEFAULT_CHAT_ALIAS,
                    "litellm_params": {"model": f"local/{local.CHAT_MODEL}"},
                },
                {
                    "model_name": DEFAULT_EMBED_ALIAS,
                    "litellm_params": {"model": f"local/{local.EMBED_MODEL}"},
                },
            ]
        },
        source="defaults",
    )


def parse_config(raw: Any, *, source: str = "config") -> GatewayConfig:
    local.register()  # so litellm's price map knows the local models
    if not isinstance(raw, dict) or not isinstance(raw.get("model_list"), list):
        raise ConfigError(f"{source}: expected a mapping with a model_list (LiteLLM proxy format)")
    settings = {**_mapping(raw.get("litellm_settings")), **_mapping(raw.get("router_settings"))}
    own = _mapping(raw.get("gateway_settings"))
    secrets: list[str] = []
    grouped: dict[str, list[tuple[Deployment, dict[str, Any]]]] = {}
    for i, entry in enumerate(raw["model_list"]):
        where = f"{source}: model_list[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("model_name"), str):
            raise ConfigError(f"{where}: needs a model_name")
        params = entry.get("litellm_params")
        if not isinstance(params, dict) or not isinstance(params.get("model"), str):
            raise ConfigError(f"{where}: needs litellm_params.model, e.g. openai/gpt-4o-mini")
        resolved = _resolve(params, where, secrets)
        info = {**_mapping(entry.get("model_info")), **_prices(resolved)}
        model = resolved["model"]
        deployment = Deployment(
            alias=entry["model_name"],
            model=model,
            provider=_provider(model, resolved),
            params={k: v for k, v in resolved.items() if k not in _OWN_PARAMS},
            timeout=_float(resolved.get("timeout"), where),
            stream_timeout=_float(resolved.get("stream_timeout"), where),
        )
        grouped.setdefault(entry["model_name"], []).append((deployment, info))

    fallbacks = _fallback_table(settings.get("fallbacks"), source)
    cw_fallbacks = _fallback_table(settings.get("context_window_fallbacks"), source)
    aliases = {
        name: _alias(name, entries, fallbacks.get(name, ()), cw_fallbacks.get(name, ()))
        for name, entries in grouped.items()
    }
    for name, chain in [*fallbacks.items(), *cw_fallbacks.items()]:
        for target in (name, *chain):
            if target not in aliases:
                raise ConfigError(f"{source}: fallback names unknown alias {target!r}")
            a, b = aliases[target], aliases[name]
            if a.mode != b.mode and a.mode_known and b.mode_known:
                raise ConfigError(f"{source}: fallback {target!r} of {name!r} is another mode")

    def default(key: str, mode: Mode) -> str | None:
        name = own.get(key)
        if name is not None:
            if name not in aliases or aliases[name].mode != mode:
                raise ConfigError(f"{source}: gateway_settings.{key} is not a {mode} alias")
            return str(name)
        return next((a.name for a in aliases.values() if a.mode == mode), None)

    return GatewayConfig(
        aliases=aliases,
        default_chat=default("default_chat_model", "chat"),
        default_embedding=default("default_embedding_model", "embedding"),
        num_retries=int(settings.get("num_retries", DEFAULT_NUM_RETRIES)),
        timeout=float(settings.get("timeout", settings.get("request_timeout", DEFAULT_TIMEOUT_S))),
        allowed_fails=int(settings.get("allowed_fails", DEFAULT_ALLOWED_FAILS)),
        cooldown=float(settings.get("cooldown_time", DEFAULT_COOLDOWN_S)),
        secrets=tuple(s for s in secrets if len(s) >= 4),
        default_transcription=default("default_transcription_model", "audio_transcription"),
    )


def _alias(
    name: str,
    entries: list[tuple[Deployment, dict[str, Any]]],
    fallbacks: tuple[str, ...],
    cw_fallbacks: tuple[str, ...],
) -> Alias:
    first, info = entries[0]
    known = _litellm_info(first.model)
    declared = info.get("mode") or known.get("mode")
    mode = _SERVED_MODES.get(declared or "chat")
    if mode is None:
        raise ConfigError(
            f"alias {name!r}: mode {declared!r} is not served"
            " (chat, embedding or audio_transcription)"
        )
    # Deployments that declare no mode (and litellm does not know) take the alias's.
    declared_modes = (i.get("mode") or _litellm_info(d.model).get("mode") for d, i in entries)
    modes: set[str] = {str(m) for m in declared_modes if m is not None}
    if len(modes) > 1:
        raise ConfigError(f"alias {name!r}: its deployments mix modes {sorted(modes)}")

    def pick(key: str, *others: str) -> Any:
        for k in (key, *others):
            if info.get(k) is not None:
                return info[k]
            if known.get(k) is not None:
                return known[k]
        return None

    return Alias(
        name=name,
        mode=mode,
        deployments=tuple(d for d, _ in entries),
        mode_known=declared is not None,
        input_cost_per_token=float(pick("input_cost_per_token") or 0.0),
        output_cost_per_token=float(pick("output_cost_per_token") or 0.0),
        cache_read_input_token_cost=_price(pick("cache_read_input_token_cost")),
        cache_creation_input_token_cost=_price(pick("cache_creation_input_token_cost")),
        context_window=_int(pick("max_input_tokens", "max_tokens")),
        max_output_tokens=_int(pick("max_output_tokens")),
        dimensions=_int(pick("output_vector_size", "dimensions")),
        fallbacks=tuple(f for f in fallbacks if f != name),
        context_window_fallbacks=tuple(f for f in cw_fallbacks if f != name),
    )


def _litellm_info(model: str) -> dict[str, Any]:
    """What litellm's bundled price map knows about a model (empty if nothing)."""
    import litellm

    try:
        return dict(litellm.get_model_info(model))
    except Exception:  # unknown model: litellm raises a bare Exception
        return {}


def _provider(model: str, params: dict[str, Any]) -> str:
    if isinstance(params.get("custom_llm_provider"), str):
        return str(params["custom_llm_provider"])
    return model.split("/", 1)[0] if "/" in model else "openai"


_PRICE_KEYS = (
    "input_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
)


def _prices(params: dict[str, Any]) -> dict[str, Any]:
    # The proxy accepts custom prices in litellm_params as well as in model_info.
    return {k: params[k] for k in _PRICE_KEYS if k in params}


def _price(value: Any) -> float | None:
    return None if value is None else float(value)


def _resolve(value: Any, where: str, secrets: list[str]) -> Any:
    """Replace ``os.environ/NAME`` references, recording the values as secrets."""
    if isinstance(value, dict):
        return {k: _resolve(v, where, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, where, secrets) for v in value]
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        name = value[len(_ENV_PREFIX) :]
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        secrets.append(os.environ[name])
        return os.environ[name]
    return value


def _fallback_table(raw: Any, source: str) -> dict[str, tuple[str, ...]]:
    """``[{alias: [fallback, ...]}, ...]`` (the proxy's shape) as a dict."""
    if raw is None:
        return {}
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise ConfigError(f"{source}: fallbacks must be a list of {{alias: [fallbacks]}}")
    table: dict[str, tuple[str, ...]] = {}
    for item in raw:
        for name, chain in item.items():
            chain = [chain] if isinstance(chain, str) else chain
            if not isinstance(chain, list):
                raise ConfigError(f"{source}: fallbacks of {name!r} must be a list of aliases")
            table[str(name)] = tuple(str(c) for c in chain)
    return table


def _mapping(raw: Any) -> dict[str, Any]:
    return dict(raw) if isinstance(raw, dict) else {}


def _float(raw: Any, where: str) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: timeout must be a number of seconds") from None


def _int(raw: Any) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
