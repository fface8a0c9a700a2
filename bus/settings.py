"""Process settings from the environment (DESIGN §7), read once at the edge."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BRIDGE_HOST = "127.0.0.1"
DEFAULT_BRIDGE_PORT = 8080
DEFAULT_MAX_CONCURRENCY = 256
DEFAULT_JWT_LEEWAY_S = 30.0
DEFAULT_JWKS_MIN_REFRESH_S = 30.0
DEFAULT_JWKS_TTL_S = 600.0
DEFAULT_BRIDGE_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_BRIDGE_TIMEOUT_S = 30.0
DEFAULT_BRIDGE_MAX_TIMEOUT_S = 300.0
DEFAULT_RATE_LIMIT_TENANT = "6000/60"
DEFAULT_RATE_LIMIT_USER = "1200/60"


def parse_quota(text: str) -> tuple[int, float]:
    """``"<requests>/<seconds>"`` → (requests, seconds): a token bucket holding ``requests``
    that refills fully in ``seconds`` ("6000/60": bursts of 6000, 100 a second sustained)."""
    count, sep, window = text.partition("/")
    try:
        requests, seconds = int(count), float(window)
    except ValueError:
        requests, seconds = 0, 0.0
    if not sep or requests < 1 or not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"quota {text!r} must look like '<requests>/<seconds>', e.g. '600/60'")
    return requests, seconds


def _check_quota(text: str) -> str:
    parse_quota(text)
    return text.strip()


#: Which requests the bridge writes an access log line for.
AccessLog = Literal["all", "errors", "off"]

#: A rate-limit quota, validated when settings are read.
QuotaText = Annotated[str, AfterValidator(_check_quota)]
#: Largest file one upload may hold (the bridge answers 413 above it; ingestion fails it).
DEFAULT_UPLOAD_MAX_BYTES = 25 * 1024 * 1024
DEFAULT_GATEWAY_CACHE_TTL_S = 3600


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

    bridge_host: str = DEFAULT_BRIDGE_HOST
    bridge_port: int = Field(default=DEFAULT_BRIDGE_PORT, ge=0, le=65535)
    jwt_secret: str | None = None
    jwt_jwks_url: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_tenant_claim: str = Field(default="tenant_id", min_length=1)
    jwt_leeway_seconds: float = Field(
        default=DEFAULT_JWT_LEEWAY_S, ge=0, le=300, description="clock skew allowed on exp/nbf"
    )
    jwt_jwks_min_refresh_seconds: float = Field(
        default=DEFAULT_JWKS_MIN_REFRESH_S,
        ge=0,
        description="an unknown kid refetches the JWKS at most once per this many seconds",
    )
    jwt_jwks_ttl_seconds: float = Field(
        default=DEFAULT_JWKS_TTL_S, gt=0, description="cached JWKS is refetched after this"
    )

    bridge_max_body_bytes: int = Field(
        default=DEFAULT_BRIDGE_MAX_BODY_BYTES, ge=1, description="larger request bodies get 413"
    )
    bridge_default_timeout_seconds: float = Field(
        default=DEFAULT_BRIDGE_TIMEOUT_S, gt=0, description="deadline of a route without its own"
    )
    bridge_max_timeout_seconds: float = Field(
        default=DEFAULT_BRIDGE_MAX_TIMEOUT_S,
        gt=0,
        description="cap on a client's X-Request-Timeout header",
    )
    bridge_access_log: AccessLog = Field(
        default="all",
        description=(
            "the bridge's per-request log line (at info level): for every request, only "
            "for those answered with an error status (>= 400), or none"
        ),
    )
    bridge_metrics_token: str | None = Field(
        default=None,
        description=(
            "bearer token /metrics requires (its labels name tenants); unset: /metrics "
            "answers loopback clients only"
        ),
    )
    rate_limit_enabled: bool = True
    rate_limit_tenant: QuotaText = Field(
        default=DEFAULT_RATE_LIMIT_TENANT, description="per tenant"
    )
    rate_limit_user: QuotaText = Field(default=DEFAULT_RATE_LIMIT_USER, description="per user")
    rate_limit_overrides: dict[str, dict[Literal["tenant", "user"], QuotaText]] = Field(
        default_factory=dict,
        description='per-tenant quotas as JSON: {"acme": {"tenant": "60000/60", "user": "600/60"}}',
    )

    upload_max_bytes: int = Field(
        default=DEFAULT_UPLOAD_MAX_BYTES,
        ge=1,
        description="largest uploaded or submitted file, in bytes",
    )

    uploads_bucket_max_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024 * 1024,
        description="most bytes the JetStream object store bucket `uploads` holds, all tenants",
    )
    ingest_tenant_max_pending_documents: int = Field(
        default=1_000,
        ge=1,
        description="documents one tenant may have queued or in progress (ingestion)",
    )
    ingest_tenant_max_pending_bytes: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="bytes of files one tenant may have queued or in progress (ingestion)",
    )

    gateway_models: str | None = Field(
        default=None, description="path to a LiteLLM proxy model_list file"
    )
    gateway_log_content: bool = Field(
        default=False, description="put prompt and completion text in LLMOps events"
    )
    llmops_retention_days: int = Field(
        default=30, ge=1, le=3650, description="days of LLM operations kept (whole partitions)"
    )
    gateway_image_url_hosts: list[str] = Field(
        default_factory=list,
        description=(
            'hosts whose https:// image URLs a generation may carry, as JSON: ["cdn.example.com",'
            ' "*.example.org"] or ["*"]; none by default (inline data: URLs only)'
        ),
    )
    gateway_cache_ttl: int = Field(
        default=DEFAULT_GATEWAY_CACHE_TTL_S,
        ge=1,
        description="seconds a cached gateway answer lives unless the request says",
    )

    @field_validator(
        "nats_url",
        "nats_user",
        "nats_password",
        "database_url",
        "redis_url",
        "otel_exporter_otlp_endpoint",
        "jwt_secret",
        "jwt_jwks_url",
        "jwt_audience",
        "jwt_issuer",
        "gateway_models",
        "health_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``JWT_SECRET=`` (compose's ``${JWT_SECRET:-}``) means unset, not an empty key."""
        return None if isinstance(value, str) and not value.strip() else value
