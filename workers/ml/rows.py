"""Rows of the ``ml`` schema as frozen dataclasses: what the stores (``store/``) return
(docs/architecture.md, "State": records are converted at the store's boundary). jsonb
columns arrive decoded by the pool's codecs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from schemas.ml import JobStatus, Task


@dataclass(frozen=True)
class JobRow:
    """A training job, without its inline rows (only the training consumer reads them)."""

    tenant_id: str
    job_id: str
    name: str
    task: Task
    algorithm: str
    spec: dict[str, Any]
    dataset_object: str | None
    dataset_format: Literal["msgpack", "csv"]
    has_dataset: bool
    status: JobStatus
    attempts: int
    error: str | None
    error_code: str | None
    error_details: Any
    version: int | None
    metrics: dict[str, float] | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class JobKey:
    tenant_id: str
    job_id: str


@dataclass(frozen=True)
class ModelRow:
    tenant_id: str
    name: str
    task: Task
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class VersionRow:
    """A model version with its serving counters, without the artifact."""

    version: int
    algorithm: str
    params: dict[str, Any]
    metrics: dict[str, float]
    signature: Any  # jsonb, a schemas.ml.Signature
    dataset_hash: str | None
    job_id: str | None
    source: Literal["trained", "uploaded"]
    artifact_sha256: str
    artifact_bytes: int
    created_at: datetime
    predictions: int
    mean_latency_ms: float | None


@dataclass(frozen=True)
class AliasRow:
    alias: str
    version: int
    model: str = field(default="")


@dataclass(frozen=True)
class ResolvedVersion:
    """The version a predict or drift request names (by number, alias or latest)."""

    model: str
    version: int
    signature: dict[str, Any]
    artifact_sha256: str
