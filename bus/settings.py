"""The settings every process of the mesh reads (docs/architecture.md, "Configuration").

Read once at the edge (``mesh`` CLI, a test's fixture) and passed inward. A component
with settings of its own has its own class beside its code: the bridge's
(``gateway_bridge.settings.BridgeSettings``, which extends this one), a worker's
(``workers/<name>/settings.py``, read in its ``lifespan``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_CONCURRENCY = 256


class Settings(BaseSettings):
    """One validated settings object per process. Unset URLs mean "embedded" to ``mesh up``."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    service_name: str = Field(default="mesh", description="name used in logs and traces")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["console", "json"] = Field(
        default="console", description="json in production, console in development"
    )
    nats_url: str | None = Field(
        default=None,
        description="e.g. nats://127.0.0.1:4222; a cluster as a comma-separated list of URLs",
    )
    nats_user: str | None = Field(
        default=None,
        description="NATS user (deploy/nats/nats-auth.conf); also sets the inbox prefix",
    )
    nats_password: str | None = Field(default=None, description="the NATS user's password")
    jetstream_provision: bool = Field(
        default=True,
        description=(
            "create/update the streams and buckets at every start (development); false in "
            "production, where `mesh provision` does it once per deploy as its own NATS user"
        ),
    )
    jetstream_replicas: int = Field(
        default=1, ge=1, le=5, description="replicas of every stream and bucket (3 in a cluster)"
    )
    health_dir: str | None = Field(
        default=None,
        description="where `mesh worker` writes each service's instance id for `mesh probe`",
    )
    database_url: str | None = Field(default=None, description="postgresql://user@host:port/db")
    redis_url: str | None = Field(default=None, description="redis://host:port/0")
    otel_exporter_otlp_endpoint: str | None = None
    codec_type: Literal["msgpack", "json", "protobuf"] = "msgpack"
    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY,
        ge=1,
        le=10_000,
        description="handlers in flight per worker",
    )
    offload_processes: int = Field(
        default=2,
        ge=1,
        le=64,
        description="processes per off-loop work pool (bus/offload.py), started on first use",
    )
    offload_memory_limit_mb: int = Field(
        default=4096,
        ge=0,
        description="address-space limit of each off-loop work process, in MiB (0: none)",
    )

    uploads_bucket_max_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024 * 1024,
        description="most bytes the JetStream object store bucket `uploads` holds, all tenants",
    )
    llmops_retention_days: int = Field(
        default=30, ge=1, le=3650, description="days of LLM operations kept (whole partitions)"
    )

    @field_validator(
        "nats_url",
        "nats_user",
        "nats_password",
        "database_url",
        "redis_url",
        "otel_exporter_otlp_endpoint",
        "health_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return empty_is_unset(value)


def empty_is_unset(value: object) -> object:
    """``NATS_USER=`` (compose's ``${NATS_USER:-}``) means unset, not an empty value; a
    component's settings class applies it to its own optional strings too."""
    return None if isinstance(value, str) and not value.strip() else value
