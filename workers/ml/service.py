"""ML Service: asynchronous training on JetStream, a versioned registry, ONNX serving,
drift reports (docs/services/ml.md).

``ml.train`` stores the dataset (inline rows become an object in the ``uploads`` bucket),
records the job and publishes it to ``ml.jobs.train`` (stream ``ML``, ``Nats-Msg-Id`` =
job id). The durable consumer ``ml-train`` runs each job in a fresh training process
(:mod:`workers.ml.sandbox`) while renewing the job's lease in Postgres every
:data:`HEARTBEAT_S`; the lease also carries cancellation (a cancelled job's process is
killed at the next beat). A worker killed mid-job leaves the message unacknowledged, so
JetStream redelivers it after ``ack_wait`` and the next attempt starts over; after
:data:`~workers.ml.store.MAX_ATTEMPTS` the job fails with the reason, and a sweeper fails
any job whose lease expired with no delivery left — no job stays ``running``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import structlog
from nats.js import JetStreamContext

from bus.codec import Codec
from bus.errors import (
    InvalidRequest,
    MeshError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from bus.jetstream import ConsumerSpec, JobConsumer, publish
from bus.postgres import Database, create_database, migrate, migrations_of
from bus.sql import tenant_of
from bus.uploads import object_info, read_object
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import ml
from schemas.context import Context
from schemas.ml import (
    TRAIN_SUBJECT,
    CancelJobRequest,
    DeleteVersionRequest,
    DeleteVersionResponse,
    DriftRequest,
    DriftResponse,
    FeatureDrift,
    GetJobRequest,
    GetModelRequest,
    Job,
    ListJobsRequest,
    ListJobsResponse,
    ListModelsRequest,
    ListModelsResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    SetAliasRequest,
    SetAliasResponse,
    TrainJob,
    TrainRequest,
    TrainResponse,
    UploadModelRequest,
    UploadModelResponse,
    Version,
)
from workers.ml import drift, sandbox
from workers.ml.algorithms import check_params
from workers.ml.data import DataError, Feature, check_rows, encode_rows, features_of, width_of
from workers.ml.serving import Loaded, SessionCache, infer
from workers.ml.settings import MLConfig
from workers.ml.store import MAX_ATTEMPTS, MLStore, Superseded, new_job_id

_log = structlog.get_logger(__name__)

VERSION = "0.1.0"
TRAIN_CONSUMER = ConsumerSpec(
    stream="ML",
    durable="ml-train",
    filter_subject=TRAIN_SUBJECT,
    # Deliveries beyond the attempts leave room for naks while Postgres is down.
    max_deliver=MAX_ATTEMPTS + 2,
    backoff=(2.0, 5.0, 10.0, 30.0),
    ack_wait=15.0,
    batch=1,  # one training at a time per replica: each takes its cores
)
#: How often a running job renews its lease and looks for a cancel.
HEARTBEAT_S = 2.0
#: A lease this old means the attempt's worker is gone.
LEASE_STALE_S = 45.0
#: Any running job whose lease is this old is failed, whatever its attempts.
LEASE_ABANDONED_S = 900.0
SWEEP_INTERVAL_S = 10.0
FLUSH_INTERVAL_S = 1.0
#: Predictions of more rows than this encode and run in a thread, off the event loop.
INLINE_ROWS = 32
#: Fewest rows a drift report compares.
MIN_DRIFT_ROWS = 20


def to_job(row: Any) -> Job:
    return Job(
        job_id=row["job_id"],
        status=row["status"],
        name=row["name"],
        task=row["task"],
        algorithm=row["algorithm"],
        model=row["name"] if row["status"] == "succeeded" else None,
        version=row["version"],
        metrics=row["metrics"],
        error=row["error"],
        error_code=row["error_code"],
        error_details=row["error_details"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def to_version(row: Any, aliases: list[str]) -> Version:
    return Version(
        version=row["version"],
        algorithm=row["algorithm"],
        params=row["params"],
        metrics=row["metrics"],
        signature=row["signature"],
        dataset_hash=row["dataset_hash"],
        job_id=row["job_id"],
        source=row["source"],
        artifact_sha256=row["artifact_sha256"],
        artifact_bytes=row["artifact_bytes"],
        aliases=aliases,
        predictions=row["predictions"],
        mean_latency_ms=row["mean_latency_ms"],
        created_at=row["created_at"],
    )


class MLService:
    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        config: MLConfig | None = None,
        *,
        codec: Codec | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.store = MLStore(db)
        self.js = js
        self.config = config or MLConfig()
        self.codec = codec or Codec()
        self.stopping = stopping or asyncio.Event()
        self.sessions = SessionCache(self.config.session_cache_bytes)
        # Serving records waiting for the next flush (monitoring data: a crash loses at
        # most one flush interval of them).
        self.stats: dict[tuple[str, str, int], list[float]] = {}
        self.samples: list[tuple[str, str, int, str]] = []

    # ------------------------------------------------------------ jobs

    async def train(self, req: TrainRequest, ctx: Context) -> TrainResponse:
        tenant = tenant_of(ctx)
        try:
            params = check_params(req.algorithm, req.task, req.params)
        except DataError as exc:
            raise InvalidRequest(exc.message, exc.details) from None
        if req.target in {f if isinstance(f, str) else f.name for f in req.features or ()}:
            raise InvalidRequest(f"the target {req.target!r} cannot be a feature")
        job_id = new_job_id()
        dataset: bytes | None = None
        dataset_object: str | None = None
        if req.dataset.rows is not None:
            # Inline rows live in the job's row until it ends (the service only reads the
            # object store: uploads are the caller's).
            dataset, fmt = msgpack.packb(req.dataset.rows, use_bin_type=True), "msgpack"
            if len(dataset) > self.config.max_dataset_bytes:
                raise PayloadTooLarge(
                    f"dataset exceeds the {self.config.max_dataset_bytes}-byte limit"
                )
        else:
            assert req.dataset.object is not None
            info = await object_info(self.js, req.dataset.object, tenant)
            if (info.size or 0) > self.config.max_dataset_bytes:
                raise PayloadTooLarge(
                    f"dataset of {info.size} bytes exceeds the"
                    f" {self.config.max_dataset_bytes}-byte limit"
                )
            dataset_object, fmt = req.dataset.object, "csv"
        spec = req.model_dump(exclude={"dataset"}) | {"params": params}
        await self.store.create_job(
            tenant,
            job_id,
            name=req.name,
            task=req.task,
            algorithm=req.algorithm,
            spec=spec,
            dataset_object=dataset_object,
            dataset=dataset,
            dataset_format=fmt,
        )
        try:
            await publish(
                self.js,
                TRAIN_SUBJECT,
                TrainJob(job_id=job_id),
                ctx,
                msg_id=job_id,
                codec=self.codec,
            )
        except MeshError as exc:
            await self.store.finish_failed(tenant, job_id, exc.code, "could not queue the job")
            raise Unavailable("could not queue the training job; try again") from None
        return TrainResponse(job_id=job_id, status="queued")

    async def get_job(self, req: GetJobRequest, ctx: Context) -> Job:
        row = await self.store.get_job(tenant_of(ctx), req.job_id)
        if row is None:
            raise NotFound(f"no job {req.job_id}")
        return to_job(row)

    async def list_jobs(self, req: ListJobsRequest, ctx: Context) -> ListJobsResponse:
        rows, cursor = await self.store.list_jobs(
            tenant_of(ctx), status=req.status, name=req.name, limit=req.limit, cursor=req.cursor
        )
        return ListJobsResponse(jobs=[to_job(r) for r in rows], next_cursor=cursor)

    async def cancel_job(self, req: CancelJobRequest, ctx: Context) -> Job:
        """Cancel a queued or running job (its process is killed within a heartbeat);
        a finished job is returned unchanged."""
        row = await self.store.cancel_job(tenant_of(ctx), req.job_id)
        if row is None:
            raise NotFound(f"no job {req.job_id}")
        return to_job(row)

    # ------------------------------------------------------------ the training consumer

    async def run_job(self, job: TrainJob, ctx: Context) -> None:
        tenant = tenant_of(ctx)
        row = await self.store.get_job(tenant, job.job_id)
        if row is None:
            raise NotFound(f"no job {job.job_id}")
        if row["status"] not in ("queued", "running"):
            return  # cancelled before it started, or a redelivery of a finished job
        if row["attempts"] >= MAX_ATTEMPTS:
            await self.store.finish_failed(
                tenant,
                job.job_id,
                "unavailable",
                f"training was interrupted {row['attempts']} times (the worker stopped)",
            )
            return
        row = await self.store.start_attempt(tenant, job.job_id)
        if row is None:
            return
        attempt = row["attempts"]
        log = _log.bind(job_id=job.job_id, attempt=attempt)
        log.info("training_started")
        try:
            if row["has_dataset"]:
                data = await self.store.dataset(tenant, job.job_id)
                if data is None:
                    raise NotFound("the job's inline rows are gone")
            else:
                _, data = await read_object(
                    self.js,
                    row["dataset_object"],
                    tenant,
                    max_bytes=self.config.max_dataset_bytes,
                )
        except (NotFound, PayloadTooLarge) as exc:
            await self.store.finish_failed(
                tenant, job.job_id, exc.code, f"dataset: {exc.message}", attempt=attempt
            )
            return
        spec = row["spec"]
        cancelled = asyncio.Event()
        beat = asyncio.create_task(self._lease(tenant, job.job_id, attempt, cancelled))
        try:
            answer = await sandbox.run(
                {"kind": "train", "spec": spec, "data": data, "format": row["dataset_format"]},
                sandbox.Limits(
                    time_s=float(spec["time_limit_s"]),
                    memory_bytes=self.config.train_memory_bytes,
                    threads=self.config.train_threads,
                ),
                cancelled=cancelled,
            )
        except sandbox.Cancelled:
            if self.stopping.is_set():
                log.info("training_interrupted_by_shutdown")
                raise Unavailable("the worker is stopping; the job will be retried") from None
            log.info("training_cancelled")
            return
        except MeshError as exc:  # bad data, time limit, a crash in the process
            log.info("training_failed", code=exc.code, error=exc.message)
            await self.store.finish_failed(
                tenant, job.job_id, exc.code, exc.message, exc.details, attempt=attempt
            )
            return
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        onnx_bytes: bytes = answer["onnx"]
        if len(onnx_bytes) > self.config.max_artifact_bytes:
            await self.store.finish_failed(
                tenant,
                job.job_id,
                "payload_too_large",
                f"the trained model is {len(onnx_bytes)} bytes, over the"
                f" {self.config.max_artifact_bytes}-byte limit; use fewer or smaller trees",
                attempt=attempt,
            )
            return
        try:
            version = await self.store.register(
                tenant,
                model=row["name"],
                task=row["task"],
                algorithm=row["algorithm"],
                params=spec["params"],
                metrics=answer["metrics"],
                signature=answer["signature"],
                reference=answer["reference"],
                dataset_hash=answer["dataset_hash"],
                job_id=job.job_id,
                source="trained",
                artifact=onnx_bytes,
                sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                attempt=attempt,
            )
        except Superseded:
            log.info("training_result_discarded")
            return
        except MeshError as exc:  # e.g. the model name holds another task's model
            await self.store.finish_failed(
                tenant, job.job_id, exc.code, exc.message, exc.details, attempt=attempt
            )
            return
        log.info("training_succeeded", version=version, seconds=round(answer["seconds"], 2))

    async def _lease(
        self, tenant: str, job_id: str, attempt: int, cancelled: asyncio.Event
    ) -> None:
        """Renew the job's lease; set ``cancelled`` on cancel, takeover or shutdown."""
        while True:
            try:
                await asyncio.wait_for(self.stopping.wait(), HEARTBEAT_S)
                cancelled.set()
                return
            except TimeoutError:
                pass
            try:
                status = await self.store.heartbeat(tenant, job_id, attempt)
            except Exception as exc:  # Postgres away: keep training, try again next beat
                _log.warning("lease_renew_failed", job_id=job_id, error=type(exc).__name__)
                continue
            if status != "running":
                cancelled.set()
                return

    async def train_failed(self, job: TrainJob | None, ctx: Context | None, reason: str) -> None:
        """The consumer gives up on a message: fail its job with the reason."""
        if job is None or ctx is None or not ctx.tenant:
            _log.error("train_job_unreadable", reason=reason)
            return
        code, _, message = reason.partition(": ")
        await self.store.finish_failed(ctx.tenant, job.job_id, code or "internal", message)

    async def sweep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SWEEP_INTERVAL_S)
            if stop.is_set():
                return
            try:
                await self.sweep_once()
            except Exception as exc:
                _log.warning("sweep_failed", error=type(exc).__name__)

    async def sweep_once(self, stale_s: float = LEASE_STALE_S) -> int:
        rows = await self.store.lost_jobs(stale_s, MAX_ATTEMPTS, LEASE_ABANDONED_S)
        for r in rows:
            _log.warning("training_lost", tenant=r["tenant_id"], job_id=r["job_id"])
        return len(rows)

    # ------------------------------------------------------------ registry

    async def list_models(self, req: ListModelsRequest, ctx: Context) -> ListModelsResponse:
        items, cursor = await self.store.list_models(tenant_of(ctx), req.limit, req.cursor)
        models = []
        for m, latest, aliases in items:
            alias_map = {a["alias"]: a["version"] for a in aliases}
            versions = []
            if latest is not None:
                names = [a for a, v in alias_map.items() if v == latest["version"]]
                versions.append(to_version(latest, names))
            models.append(
                ModelInfo(
                    name=m["name"],
                    task=m["task"],
                    latest_version=latest["version"] if latest is not None else None,
                    aliases=alias_map,
                    versions=versions,
                    created_at=m["created_at"],
                    updated_at=m["updated_at"],
                )
            )
        return ListModelsResponse(models=models, next_cursor=cursor)

    async def get_model(self, req: GetModelRequest, ctx: Context) -> ModelInfo:
        m, versions, aliases = await self.store.model(tenant_of(ctx), req.model)
        alias_map = {a["alias"]: a["version"] for a in aliases}
        return ModelInfo(
            name=m["name"],
            task=m["task"],
            latest_version=versions[0]["version"] if versions else None,
            aliases=alias_map,
            versions=[
                to_version(v, [a for a, n in alias_map.items() if n == v["version"]])
                for v in versions
            ],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
        )

    async def set_alias(self, req: SetAliasRequest, ctx: Context) -> SetAliasResponse:
        previous = await self.store.set_alias(tenant_of(ctx), req.model, req.alias, req.version)
        return SetAliasResponse(
            model=req.model, alias=req.alias, version=req.version, previous_version=previous
        )

    async def delete_version(
        self, req: DeleteVersionRequest, ctx: Context
    ) -> DeleteVersionResponse:
        tenant = tenant_of(ctx)
        deleted = await self.store.delete_version(tenant, req.model, req.version)
        if not deleted:
            raise NotFound(f"model {req.model!r} has no version {req.version}")
        self.sessions.drop(tenant, req.model, req.version)
        return DeleteVersionResponse(deleted=True)

    async def upload_model(self, req: UploadModelRequest, ctx: Context) -> UploadModelResponse:
        """Register an uploaded ONNX file after the checks of ``trainer.check_model``,
        which run in a separate process: the file is never loaded any other way."""
        tenant = tenant_of(ctx)
        features = []
        for f in req.features:
            if f.type == "categorical" and not f.categories:
                raise InvalidRequest(f"categorical feature {f.name!r} needs its categories")
            features.append(Feature(f.name, f.type, list(f.categories or [])))
        if len({f.name for f in features}) != len(features):
            raise InvalidRequest("a feature is named twice")
        width = width_of(features)
        info = await object_info(self.js, req.object, tenant)
        if (info.size or 0) > self.config.max_artifact_bytes:
            raise PayloadTooLarge(
                f"model of {info.size} bytes exceeds the {self.config.max_artifact_bytes}-byte"
                " limit"
            )
        _, data = await read_object(
            self.js, req.object, tenant, max_bytes=self.config.max_artifact_bytes
        )
        answer = await sandbox.run(
            {
                "kind": "check_model",
                "data": data,
                "width": width,
                "task": req.task,
                "n_classes": len(req.classes or ()),
            },
            sandbox.Limits(
                time_s=self.config.check_time_s, memory_bytes=self.config.train_memory_bytes
            ),
        )
        signature = {
            "task": req.task,
            "features": [f.as_dict() for f in features],
            "target": None,
            "classes": req.classes,
            "width": width,
            "input": answer["input"],
        }
        version = await self.store.register(
            tenant,
            model=req.name,
            task=req.task,
            algorithm="onnx",
            params={},
            metrics={},
            signature=signature,
            reference=None,
            dataset_hash=None,
            job_id=None,
            source="uploaded",
            artifact=data,
            sha256=answer["sha256"],
        )
        return UploadModelResponse(
            model=req.name, version=version, artifact_sha256=answer["sha256"]
        )

    # ------------------------------------------------------------ inference

    async def _loaded(self, tenant: str, req: PredictRequest | DriftRequest) -> tuple[int, Loaded]:
        row = await self.store.resolve(tenant, req.model, req.version, req.alias)
        version = row["version"]
        key = (tenant, req.model, version)
        loaded = self.sessions.get(key)
        if loaded is None:
            loaded = await self.sessions.load(
                key,
                row["signature"],
                lambda: self.store.artifact(tenant, req.model, version),
                row["artifact_sha256"],
            )
        return version, loaded

    async def predict(self, req: PredictRequest, ctx: Context) -> PredictResponse:
        tenant = tenant_of(ctx)
        version, loaded = await self._loaded(tenant, req)
        started = time.perf_counter()

        def score() -> tuple[list[Any], list[list[float]] | None]:
            return infer(loaded, encode_rows(loaded.features, req.rows))

        try:
            if len(req.rows) <= INLINE_ROWS:
                predictions, probabilities = score()
            else:
                predictions, probabilities = await asyncio.to_thread(score)
        except DataError as exc:
            raise InvalidRequest(exc.message, exc.details) from None
        self._record(tenant, req.model, version, req.rows, time.perf_counter() - started)
        # Built from the registry's classes and onnxruntime's floats: nothing to validate.
        return PredictResponse.model_construct(
            model=req.model,
            version=version,
            predictions=predictions,
            probabilities=probabilities,
        )

    def _record(
        self, tenant: str, model: str, version: int, rows: list[Any], seconds: float
    ) -> None:
        key = (tenant, model, version)
        ms = seconds * 1000
        s = self.stats.get(key)
        if s is None:
            self.stats[key] = [1, len(rows), ms, ms]
        else:
            s[0] += 1
            s[1] += len(rows)
            s[2] += ms
            s[3] = max(s[3], ms)
        k = self.config.sample_per_call
        if k and len(self.samples) < 50 * k + 10_000:  # bounded until the next flush
            chosen = rows if len(rows) <= k else random.sample(rows, k)
            self.samples.extend((tenant, model, version, json.dumps(r)) for r in chosen)

    async def flush(self) -> None:
        stats, samples = self.stats, self.samples
        self.stats, self.samples = {}, []
        if stats or samples:
            await self.store.record_serving(stats, samples, self.config.sample_keep)

    async def flush_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception as exc:  # monitoring data: dropped, never retried forever
                _log.warning("serving_flush_failed", error=type(exc).__name__)

    async def drift(self, req: DriftRequest, ctx: Context) -> DriftResponse:
        tenant = tenant_of(ctx)
        row = await self.store.resolve(tenant, req.model, req.version, req.alias)
        version = row["version"]
        ref_text = await self.store.reference(tenant, req.model, version)
        if not ref_text:
            raise InvalidRequest(
                f"version {version} of {req.model!r} has no training reference (uploaded model)"
            )
        rows = req.rows
        if rows is None:
            await self.flush()  # include the newest predictions' inputs
            rows = await self.store.recent_samples(
                tenant, req.model, version, self.config.sample_keep
            )
        if len(rows) < MIN_DRIFT_ROWS:
            raise InvalidRequest(
                f"a drift report needs at least {MIN_DRIFT_ROWS} rows; {len(rows)} available",
                {"rows": len(rows)},
            )
        signature = row["signature"]
        features = features_of(signature)

        def report() -> tuple[int, list[dict[str, Any]]]:
            # The reference (1,001 quantiles a feature) is parsed here, off the loop.
            ref = json.loads(ref_text)
            n_ref = max((int(r.get("n", 0)) for r in ref.values()), default=0)
            return n_ref, drift.compare(features, ref, check_rows(features, rows))

        try:
            n_ref, results = await asyncio.to_thread(report)
        except DataError as exc:
            raise InvalidRequest(exc.message, exc.details) from None
        items = [FeatureDrift(**r) for r in results]
        return DriftResponse(
            model=req.model,
            version=version,
            rows=len(rows),
            reference_rows=n_ref,
            drifted=any(i.drifted for i in items),
            features=items,
        )


def build_worker(svc: MLService, codec: Codec | None = None, max_concurrency: int = 64) -> Worker:
    return Worker(
        "ml",
        endpoints=[
            Endpoint(ml.TRAIN, svc.train),
            Endpoint(ml.GET_JOB, svc.get_job),
            Endpoint(ml.LIST_JOBS, svc.list_jobs),
            Endpoint(ml.CANCEL_JOB, svc.cancel_job),
            Endpoint(ml.PREDICT, svc.predict),
            Endpoint(ml.LIST_MODELS, svc.list_models),
            Endpoint(ml.GET_MODEL, svc.get_model),
            Endpoint(ml.SET_ALIAS, svc.set_alias),
            Endpoint(ml.DELETE_VERSION, svc.delete_version),
            Endpoint(ml.DRIFT, svc.drift),
            Endpoint(ml.UPLOAD_MODEL, svc.upload_model),
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
    if not env.settings.database_url:
        raise RuntimeError("DATABASE_URL is not set")
    config = MLConfig()
    db = await create_database(env.settings.database_url)
    try:
        await migrate(db, "ml", migrations_of("workers.ml"))
        await asyncio.to_thread(_warm_up)
        codec = Codec(env.settings.codec_type)
        stopping = asyncio.Event()
        svc = MLService(db, env.js, config, codec=codec, stopping=stopping)
        consumer = JobConsumer(
            env.js, TRAIN_CONSUMER, TrainJob, svc.run_job, on_failed=svc.train_failed, codec=codec
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(consumer.run(stopping))
            tg.create_task(svc.sweep(stopping))
            tg.create_task(svc.flush_loop(stopping))
            try:
                yield build_worker(svc, codec, min(env.settings.max_concurrency, 64))
            finally:
                stopping.set()
    finally:
        await db.close()
