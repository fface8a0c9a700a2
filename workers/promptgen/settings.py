"""The Prompt Generator Service's own settings (env prefix ``PROMPTGEN_``), read once in
``lifespan``. The limits here are the policy every generated spec is checked against."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.gateway import DEFAULT_CHAT_MODEL

#: Repair rounds after the first answer (the issue: at most 2).
DEFAULT_MAX_REPAIRS = 2
#: Longest model answer parsed, in characters (a spec is a few KB; see docs).
DEFAULT_MAX_ANSWER_CHARS = 32_000
DEFAULT_MAX_TOKENS = 1024


class PromptgenConfig(BaseSettings):
    """Which services the generator calls, how it generates, and the spec policy."""

    model_config = SettingsConfigDict(env_prefix="PROMPTGEN_", extra="ignore")

    gateway_service: str = Field(default="gateway", description="answers generate/models")
    agent_service: str = Field(default="agent", description="tools, settings, create, runs")
    rag_service: str = Field(default="rag", description="answers list/get collection")
    prompt_service: str = Field(default="prompt", description="answers list/get template")

    default_model: str = Field(default=DEFAULT_CHAT_MODEL, description="alias that writes specs")
    tool_call_models: list[str] = Field(
        default_factory=list,
        description="aliases asked through a forced tool call instead of response_format",
    )
    compact_models: list[str] = Field(
        default_factory=lambda: [DEFAULT_CHAT_MODEL],
        description="aliases asked for the compact schema (bounded strings, fewer fields; "
        "the rest completed deterministically): small local models",
    )
    max_repairs: int = Field(default=DEFAULT_MAX_REPAIRS, ge=0, le=2)
    max_answer_chars: int = Field(default=DEFAULT_MAX_ANSWER_CHARS, ge=1000, le=200_000)
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=64, le=32_768)
    temperature: float = Field(default=0.0, ge=0, le=2)
    catalogue_limit: int = Field(
        default=100, ge=1, le=500, description="collections/templates shown to the model"
    )

    # --- policy: limits a spec may ask for ----------------------------------------------
    max_steps: int = Field(default=20, ge=1, le=50)
    max_token_budget: int = Field(default=200_000, ge=100, le=2_000_000)
    max_timeout_seconds: float = Field(default=600.0, gt=0, le=3600)
    max_reply_tokens: int = Field(default=8192, ge=1, le=32_768)
    max_tools: int = Field(default=16, ge=1, le=64)

    def is_compact(self, model: str) -> bool:
        """Whether ``model`` is asked for the compact schema."""
        return model in self.compact_models
