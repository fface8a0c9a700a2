"""The Gateway Service's own settings (env prefix ``GATEWAY_``), read once in its
``lifespan``, and litellm's offline switches.

``GATEWAY_MODELS``, ``GATEWAY_LOG_CONTENT`` and ``GATEWAY_CACHE_TTL`` keep the names they
had as part of the process settings.
"""

from __future__ import annotations

import os

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.settings import empty_is_unset
from workers.gateway.cache import DEFAULT_TTL_S as DEFAULT_CACHE_TTL_S

#: Environment litellm reads when it is imported: without these it fetches its price map
#: and tokenizers from the network at import and on first token count (a ~20 s stall
#: offline). An operator's own values win.
OFFLINE_ENV: dict[str, str] = {
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "true",
    "HF_HUB_OFFLINE": "1",
}


def prefer_offline() -> None:
    """Set litellm's offline variables unless already set. Call it before the first
    ``import litellm`` of the process: the gateway's ``lifespan`` does, and so does any
    other entry point (tests, benches) that imports the gateway's modules directly."""
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)


class GatewaySettings(BaseSettings):
    """Which models the gateway serves and what its LLMOps events and cache keep."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    models: str | None = Field(
        default=None, description="path to a LiteLLM proxy model_list file (GATEWAY_MODELS)"
    )
    log_content: bool = Field(
        default=False, description="put prompt and completion text in LLMOps events"
    )
    image_url_hosts: list[str] = Field(
        default_factory=list,
        description=(
            'hosts whose https:// image URLs a generation may carry, as JSON: ["cdn.example.com",'
            ' "*.example.org"] or ["*"]; none by default (inline data: URLs only) '
            "(GATEWAY_IMAGE_URL_HOSTS)"
        ),
    )
    fast_path: bool = Field(
        default=True,
        description=(
            "call OpenAI-compatible deployments directly over HTTP instead of through "
            "litellm's per-call machinery; false: every call through litellm "
            "(GATEWAY_FAST_PATH, docs/services/gateway.md)"
        ),
    )
    cache_ttl: int = Field(
        default=DEFAULT_CACHE_TTL_S,
        ge=1,
        description="seconds a cached gateway answer lives unless the request says",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return empty_is_unset(value)
