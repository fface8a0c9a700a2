"""The bridge's settings: address, JWT, body and deadline limits, rate limits, uploads.

``BridgeSettings`` extends the process settings (:class:`bus.settings.Settings`: NATS,
Redis, codec, logging) with the bridge's own; ``mesh bridge`` reads it once and
``create_app`` receives it. Environment names are the field names in capitals
(``JWT_SECRET``, ``RATE_LIMIT_TENANT``, ``UPLOAD_MAX_BYTES``, ...).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from bus.settings import Settings, empty_is_unset
from schemas.ingestion import DEFAULT_UPLOAD_MAX_BYTES

DEFAULT_BRIDGE_HOST = "127.0.0.1"
DEFAULT_BRIDGE_PORT = 8080
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


class BridgeSettings(Settings):
    """The process settings plus the bridge's own."""

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

    @field_validator(
        "jwt_secret",
        "jwt_jwks_url",
        "jwt_audience",
        "jwt_issuer",
        "bridge_metrics_token",
        mode="before",
    )
    @classmethod
    def _empty_jwt_is_unset(cls, value: object) -> object:
        """``JWT_SECRET=`` (compose's ``${JWT_SECRET:-}``) means unset, not an empty key."""
        return empty_is_unset(value)
