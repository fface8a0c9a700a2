"""Process settings from the environment (DESIGN §7), read once at the edge."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BRIDGE_HOST = "127.0.0.1"
DEFAULT_BRIDGE_PORT = 8080
DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_GATEWAY_CACHE_TTL_S = 3600


class Settings(BaseSettings):
    """One validated settings object per process. Unset URLs mean "embedded" to ``mesh up``."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    service_name: str = Field(default="mesh", description="name used in logs and traces")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = Field(
        default="console", description="json in production, console in development"
    )
    nats_url: str | None = Field(default=None, description="e.g. nats://127.0.0.1:4222")
    database_url: str | None = Field(default=None, description="postgresql://user@host:port/db")
    redis_url: str | None = Field(default=None, description="redis://host:port/0")
    otel_exporter_otlp_endpoint: str | None = None
    codec_type: Literal["msgpack", "json"] = "msgpack"
    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY,
        ge=1,
        le=10_000,
        description="handlers in flight per worker",
    )

    bridge_host: str = DEFAULT_BRIDGE_HOST
    bridge_port: int = Field(default=DEFAULT_BRIDGE_PORT, ge=0, le=65535)
    jwt_secret: str | None = None
    jwt_jwks_url: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_tenant_claim: str = "tenant_id"

    gateway_models: str | None = Field(
        default=None, description="path to a LiteLLM proxy model_list file"
    )
    gateway_log_content: bool = Field(
        default=False, description="put prompt and completion text in LLMOps events"
    )
    gateway_cache_ttl: int = Field(
        default=DEFAULT_GATEWAY_CACHE_TTL_S,
        ge=1,
        description="seconds a cached gateway answer lives unless the request says",
    )
