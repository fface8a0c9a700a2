"""The Ingestion Service's own settings, read once in its ``lifespan``.

``UPLOAD_MAX_BYTES`` is the same variable the bridge reads for its upload route
(``gateway_bridge.settings.BridgeSettings``): one limit, enforced at both doors.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.ingestion import DEFAULT_UPLOAD_MAX_BYTES


class IngestionSettings(BaseSettings):
    """Limits of the files ingestion accepts and of each tenant's pending work."""

    model_config = SettingsConfigDict(extra="ignore")

    upload_max_bytes: int = Field(
        default=DEFAULT_UPLOAD_MAX_BYTES,
        ge=1,
        description="largest submitted file, in bytes (UPLOAD_MAX_BYTES)",
    )
    ingest_tenant_max_pending_documents: int = Field(
        default=1_000,
        ge=1,
        description="documents one tenant may have queued or in progress",
    )
    ingest_tenant_max_pending_bytes: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="bytes of files one tenant may have queued or in progress",
    )
