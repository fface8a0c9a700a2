"""The ML Service's own settings (env prefix ``ML_``), read once in ``lifespan``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.ml.serving import DEFAULT_CACHE_BYTES

DEFAULT_MAX_ARTIFACT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DATASET_BYTES = 64 * 1024 * 1024
DEFAULT_TRAIN_MEMORY_BYTES = 4 * 1024**3


class MLConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ML_", extra="ignore")

    max_artifact_bytes: int = Field(
        default=DEFAULT_MAX_ARTIFACT_BYTES, ge=1024, description="largest model stored or uploaded"
    )
    max_dataset_bytes: int = Field(
        default=DEFAULT_MAX_DATASET_BYTES, ge=1024, description="largest training dataset read"
    )
    train_memory_bytes: int = Field(
        default=DEFAULT_TRAIN_MEMORY_BYTES,
        ge=0,
        description="address-space limit of a training process (0: none)",
    )
    train_threads: int = Field(default=1, ge=1, le=64, description="cores one training uses")
    session_cache_bytes: int = Field(
        default=DEFAULT_CACHE_BYTES, ge=0, description="bound on cached model bytes per replica"
    )
    sample_per_call: int = Field(
        default=50, ge=0, le=1000, description="input rows of each predict kept for drift"
    )
    sample_keep: int = Field(
        default=10_000, ge=100, description="newest input rows kept per version for drift"
    )
    check_time_s: float = Field(default=60.0, gt=0, description="time limit of an upload check")
