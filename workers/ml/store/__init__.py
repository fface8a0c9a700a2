"""Postgres storage of the ML Service (schema ``ml``): training jobs (``jobs.py``), the
model registry and serving records (``models.py``)."""

from workers.ml.store.jobs import MAX_ATTEMPTS, JobStore, new_job_id
from workers.ml.store.models import ModelStore, Superseded

__all__ = ["MAX_ATTEMPTS", "JobStore", "ModelStore", "Superseded", "new_job_id"]
