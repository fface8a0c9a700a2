"""ML Service: asynchronous training on JetStream, a versioned registry, ONNX serving,
drift reports (docs/services/ml.md).

``ml.train`` stores the dataset (inline rows become an object in the ``uploads`` bucket),
records the job and publishes it to ``ml.jobs.train`` (stream ``ML``, ``Nats-Msg-Id`` =
job id). The durable consumer ``ml-train`` runs each job in a fresh training process
(:mod:`workers.ml.sandbox`) while renewing the job's lease in Postgres every
:data:`~workers.ml.training.HEARTBEAT_S`; the lease also carries cancellation (a cancelled
job's process is killed at the next beat). A worker killed mid-job leaves the message
unacknowledged, so JetStream redelivers it after ``ack_wait`` and the next attempt starts
over; after
:data:`~workers.ml.store.MAX_ATTEMPTS` the job fails with the reason, and a sweeper fails
any job whose lease expired with no delivery left — no job stays ``running``.

The handlers are grouped by resource: ``training.py`` (jobs and their consumer),
``registry.py`` (models and versions), ``inference.py`` (predict, drift); storage in
``store/`` (``jobs.py``, ``models.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.js import JetStreamContext

from bus.codec import Codec
from bus.jetstream import JobConsumer
from bus.lifespan import background, database
from bus.postgres import Database
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import ml
from schemas.ml import TrainJob
from workers.ml.inference import Inference
from workers.ml.registry import Registry
from workers.ml.serving import SessionCache
from workers.ml.settings import MLConfig
from workers.ml.store import JobStore, ModelStore
from workers.ml.training import TRAIN_CONSUMER, Training

VERSION = "0.1.0"


class MLService:
    """The handlers by resource: training jobs, the registry, inference and drift."""

    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        config: MLConfig | None = None,
        *,
        codec: Codec | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        config = config or MLConfig()
        jobs, models = JobStore(db), ModelStore(db)
        sessions = SessionCache(config.session_cache_bytes)
        self.training = Training(
            jobs, models, js, config, codec or Codec(), stopping or asyncio.Event()
        )
        self.registry = Registry(models, js, config, sessions)
        self.inference = Inference(models, config, sessions)
        self.sweep_once = self.training.sweep_once


def build_worker(svc: MLService, codec: Codec | None = None, max_concurrency: int = 64) -> Worker:
    return Worker(
        "ml",
        endpoints=[
            Endpoint(ml.TRAIN, svc.training.train),
            Endpoint(ml.GET_JOB, svc.training.get_job),
            Endpoint(ml.LIST_JOBS, svc.training.list_jobs),
            Endpoint(ml.CANCEL_JOB, svc.training.cancel_job),
            Endpoint(ml.PREDICT, svc.inference.predict),
            Endpoint(ml.LIST_MODELS, svc.registry.list_models),
            Endpoint(ml.GET_MODEL, svc.registry.get_model),
            Endpoint(ml.SET_ALIAS, svc.registry.set_alias),
            Endpoint(ml.DELETE_VERSION, svc.registry.delete_version),
            Endpoint(ml.DRIFT, svc.inference.drift),
            Endpoint(ml.UPLOAD_MODEL, svc.registry.upload_model),
        ],
        version=VERSION,
        description="Training jobs, model registry, ONNX inference and drift reports",
        codec=codec or Codec(),
        max_concurrency=max_concurrency,
    )


def _warm_up() -> None:
    """Import what the first drift report would otherwise import mid-request (seconds)."""
    import scipy.special  # noqa: F401
    import scipy.stats  # noqa: F401


@asynccontextmanager
async def lifespan(env: WorkerEnv) -> AsyncIterator[Worker]:
    config = MLConfig()
    async with database(env.settings, "ml", "workers.ml") as db:
        await asyncio.to_thread(_warm_up)
        codec = Codec(env.settings.codec_type)
        stopping = asyncio.Event()
        svc = MLService(db, env.js, config, codec=codec, stopping=stopping)
        training = svc.training
        consumer = JobConsumer(
            env.js,
            TRAIN_CONSUMER,
            TrainJob,
            training.run_job,
            on_failed=training.train_failed,
            codec=codec,
        )
        async with background(stopping, consumer.run, training.sweep, svc.inference.flush_loop):
            yield build_worker(svc, codec, min(env.settings.max_concurrency, 64))
