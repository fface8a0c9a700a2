"""Training jobs: submit (``ml.train``), read, list, cancel, and the consumer that runs
each job in a fresh, killable training process (docs/services/ml.md)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

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
from bus.jetstream import ConsumerSpec, publish
from bus.sql import tenant_of
from bus.uploads import object_info, read_object
from schemas.context import Context
from schemas.ml import (
    TRAIN_SUBJECT,
    CancelJobRequest,
    GetJobRequest,
    Job,
    ListJobsRequest,
    ListJobsResponse,
    TrainJob,
    TrainRequest,
    TrainResponse,
)
from workers.ml import sandbox
from workers.ml.algorithms import check_params
from workers.ml.data import DataError
from workers.ml.rows import JobRow
from workers.ml.settings import MLConfig
from workers.ml.store import MAX_ATTEMPTS, JobStore, ModelStore, Superseded, new_job_id

_log = structlog.get_logger(__name__)

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


def to_job(row: JobRow) -> Job:
    return Job(
        job_id=row.job_id,
        status=row.status,
        name=row.name,
        task=row.task,
        algorithm=row.algorithm,
        model=row.name if row.status == "succeeded" else None,
        version=row.version,
        metrics=row.metrics,
        error=row.error,
        error_code=row.error_code,
        error_details=row.error_details,
        attempts=row.attempts,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


class Training:
    def __init__(
        self,
        jobs: JobStore,
        models: ModelStore,
        js: JetStreamContext,
        config: MLConfig,
        codec: Codec,
        stopping: asyncio.Event,
    ) -> None:
        self.jobs = jobs
        self.models = models
        self.js = js
        self.config = config
        self.codec = codec
        self.stopping = stopping

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
        await self.jobs.create_job(
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
            await self.jobs.finish_failed(tenant, job_id, exc.code, "could not queue the job")
            raise Unavailable("could not queue the training job; try again") from None
        return TrainResponse(job_id=job_id, status="queued")

    async def get_job(self, req: GetJobRequest, ctx: Context) -> Job:
        row = await self.jobs.get_job(tenant_of(ctx), req.job_id)
        if row is None:
            raise NotFound(f"no job {req.job_id}")
        return to_job(row)

    async def list_jobs(self, req: ListJobsRequest, ctx: Context) -> ListJobsResponse:
        rows, cursor = await self.jobs.list_jobs(
            tenant_of(ctx), status=req.status, name=req.name, limit=req.limit, cursor=req.cursor
        )
        return ListJobsResponse(jobs=[to_job(r) for r in rows], next_cursor=cursor)

    async def cancel_job(self, req: CancelJobRequest, ctx: Context) -> Job:
        """Cancel a queued or running job (its process is killed within a heartbeat);
        a finished job is returned unchanged."""
        row = await self.jobs.cancel_job(tenant_of(ctx), req.job_id)
        if row is None:
            raise NotFound(f"no job {req.job_id}")
        return to_job(row)

    # ------------------------------------------------------------ the training consumer

    async def run_job(self, job: TrainJob, ctx: Context) -> None:
        tenant = tenant_of(ctx)
        row = await self.jobs.get_job(tenant, job.job_id)
        if row is None:
            raise NotFound(f"no job {job.job_id}")
        if row.status not in ("queued", "running"):
            return  # cancelled before it started, or a redelivery of a finished job
        if row.attempts >= MAX_ATTEMPTS:
            await self.jobs.finish_failed(
                tenant,
                job.job_id,
                "unavailable",
                f"training was interrupted {row.attempts} times (the worker stopped)",
            )
            return
        row = await self.jobs.start_attempt(tenant, job.job_id)
        if row is None:
            return
        attempt = row.attempts
        log = _log.bind(job_id=job.job_id, attempt=attempt)
        log.info("training_started")
        try:
            if row.has_dataset:
                data = await self.jobs.dataset(tenant, job.job_id)
                if data is None:
                    raise NotFound("the job's inline rows are gone")
            else:
                _, data = await read_object(
                    self.js,
                    row.dataset_object or "",  # set whenever there are no inline rows
                    tenant,
                    max_bytes=self.config.max_dataset_bytes,
                )
        except (NotFound, PayloadTooLarge) as exc:
            await self.jobs.finish_failed(
                tenant, job.job_id, exc.code, f"dataset: {exc.message}", attempt=attempt
            )
            return
        spec = row.spec
        cancelled = asyncio.Event()
        beat = asyncio.create_task(self._lease(tenant, job.job_id, attempt, cancelled))
        try:
            answer = await sandbox.run(
                {"kind": "train", "spec": spec, "data": data, "format": row.dataset_format},
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
            await self.jobs.finish_failed(
                tenant, job.job_id, exc.code, exc.message, exc.details, attempt=attempt
            )
            return
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        onnx_bytes: bytes = answer["onnx"]
        if len(onnx_bytes) > self.config.max_artifact_bytes:
            await self.jobs.finish_failed(
                tenant,
                job.job_id,
                "payload_too_large",
                f"the trained model is {len(onnx_bytes)} bytes, over the"
                f" {self.config.max_artifact_bytes}-byte limit; use fewer or smaller trees",
                attempt=attempt,
            )
            return
        try:
            version = await self.models.register(
                tenant,
                model=row.name,
                task=row.task,
                algorithm=row.algorithm,
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
            await self.jobs.finish_failed(
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
                status = await self.jobs.heartbeat(tenant, job_id, attempt)
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
        await self.jobs.finish_failed(ctx.tenant, job.job_id, code or "internal", message)

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
        rows = await self.jobs.lost_jobs(stale_s, MAX_ATTEMPTS, LEASE_ABANDONED_S)
        for r in rows:
            _log.warning("training_lost", tenant=r.tenant_id, job_id=r.job_id)
        return len(rows)
