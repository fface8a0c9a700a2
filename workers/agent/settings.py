"""The Agent Service's own settings (env prefix ``AGENT_``), read once in ``lifespan``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.gateway import DEFAULT_CHAT_MODEL, DEFAULT_EMBED_DIMENSIONS, DEFAULT_EMBED_MODEL

DEFAULT_CACHE_TTL_S = 3600
DEFAULT_TOOL_RESULT_CHARS = 8000
DEFAULT_TOOL_TIMEOUT_S = 30.0
DEFAULT_REPLY_RESERVE = 1024


class AgentConfig(BaseSettings):
    """Which services the agent calls, and its defaults.

    The service names exist so a deployment (or a test) can point the agent at another
    service answering the same contracts; production keeps the defaults.
    """

    model_config = SettingsConfigDict(env_prefix="AGENT_", extra="ignore")

    gateway_service: str = Field(default="gateway", description="answers generate/stream/...")
    rag_service: str = Field(default="rag", description="answers search")
    prompt_service: str = Field(default="prompt", description="answers render")
    cache_service: str = Field(default="cache", description="answers get/set")
    default_model: str = DEFAULT_CHAT_MODEL
    embed_model: str = DEFAULT_EMBED_MODEL
    embed_dimensions: int = Field(
        default=DEFAULT_EMBED_DIMENSIONS, description="must match the memories table (384)"
    )
    cache_ttl_seconds: int = Field(default=DEFAULT_CACHE_TTL_S, ge=1)
    tool_result_chars: int = Field(
        default=DEFAULT_TOOL_RESULT_CHARS, ge=256, description="longest tool result shown"
    )
    tool_timeout_seconds: float = Field(default=DEFAULT_TOOL_TIMEOUT_S, gt=0)
    reply_reserve_tokens: int = Field(
        default=DEFAULT_REPLY_RESERVE,
        ge=16,
        description="tokens kept free for the answer when max_tokens is not set",
    )
    run_consumer: bool = Field(
        default=True, description="process queued background runs in this process"
    )
