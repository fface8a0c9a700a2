"""Data Ingestion Service: jobs, parsing on a durable consumer, progress from RAG.

``ingestion.submit.request`` records one job per document (Postgres), then publishes it
to ``ingest.jobs.parse`` with ``Nats-Msg-Id`` = job id; a sweeper re-publishes any job
whose publish did not happen (an outbox), so a recorded job is never left behind. The
parse consumer (``ingestion-parse``) reads the file from the object store, detects its
type from its content, extracts text under limits and hands it to RAG on
``ingest.jobs.index``. The progress consumer (``ingestion-progress``, stream EVENTS)
records the stages RAG reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import structlog
from nats.js import JetStreamContext

from bus import offload
from bus.client import Client
from bus.codec import Codec
from bus.context import child, new_context
from bus.errors import MeshError, NotFound, RetryableError
from bus.jetstream import ConsumerSpec, JobConsumer, publish
from bus.lifespan import background, database
from bus.patience import until_available
from bus.postgres import Database
from bus.sql import tenant_of
from bus.uploads import (
    CONTENT_TYPE_HEADER,
    FILENAME_HEADER,
    delete_object,
    header,
    new_object_name,
    object_info,
    put_stream,
    read_object,
)
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import gateway, ingestion, rag
from schemas.context import Context
from schemas.gateway import MAX_TRANSCRIBE_BYTES, TranscribeRequest
from schemas.ingestion import (
    INDEX_SUBJECT,
    PARSE_SUBJECT,
    PROGRESS_SUBJECT,
    GetJobRequest,
    IndexJob,
    Job,
    JobProgress,
    JobRef,
    ListJobsRequest,
    ListJobsResponse,
    ParseJob,
    SubmitDocument,
    SubmitRequest,
    SubmitResponse,
)
from workers.ingestion import audio, images, pdf
from workers.ingestion.parsing import (
    Limits,
    Parsed,
    ParseError,
    finish_pdf,
    from_units,
    parse,
)
from workers.ingestion.settings import IngestionSettings
from workers.ingestion.store import JobStore, NewJob, Quota, new_job_id, to_job

_log = structlog.get_logger(__name__)

T = TypeVar("T")

VERSION = "0.1.0"
PARSE_CONSUMER = ConsumerSpec(
    stream="INGEST",
    durable="ingestion-parse",
    filter_subject=PARSE_SUBJECT,
    max_deliver=6,
    backoff=(2.0, 10.0, 30.0, 60.0, 120.0),
    ack_wait=15.0,
    batch=4,
)
PROGRESS_CONSUMER = ConsumerSpec(
    stream="EVENTS",
    durable="ingestion-progress",
    filter_subject=PROGRESS_SUBJECT,
    max_deliver=10,
    backoff=(1.0, 5.0, 15.0, 30.0),
    ack_wait=15.0,
    batch=32,
)
#: The outbox sweeper: how often it looks, and how old an unpublished job must be.
SWEEP_INTERVAL_S = 10.0
SWEEP_AGE_S = 5.0
SWEEP_BATCH = 500
#: Parsed text is capped by the parser's own limit; this only bounds the object write.
MAX_PARSED_BYTES = 64 * 1024 * 1024
COLLECTION_CHECK_TIMEOUT_S = 3.0
#: Longest a transcription through the gateway may take (a long recording, a slow provider).
TRANSCRIBE_TIMEOUT_S = 900.0
#: Time budget of parsing one file, OCR aside.
PARSE_BUDGET_S = 60.0
#: Time budget of reading one image or one scanned PDF page by OCR (a full page takes
#: 5-20 s on a loaded 2-core machine: docs/services/ingestion.md).
OCR_PAGE_BUDGET_S = 120.0


async def _off_loop(fn: Callable[..., T], *args: Any, budget: float, tenant: str, **kw: Any) -> T:
    """Run CPU-bound parsing of untrusted input in a killable process, within ``budget``."""
    return await offload.run(
        fn,
        *args,
        budget=budget,
        key=tenant,
        what="parsing the document",
        pool="ingestion",
        **kw,
    )


def _stem(filename: str | None) -> str | None:
    if not filename:
        return None
    base = filename.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


class Ingestion:
    def __init__(
        self,
        db: Database,
        js: JetStreamContext,
        client: Client,
        settings: IngestionSettings,
        *,
        codec: Codec | None = None,
        stopping: asyncio.Event | None = None,
        limits: Limits | None = None,
        parse_budget_s: float = PARSE_BUDGET_S,
    ) -> None:
        self.store = JobStore(db)
        self.js = js
        self.client = client
        self.codec = codec or Codec()
        self.stopping = stopping or asyncio.Event()
        self.limits = limits or Limits(max_bytes=settings.upload_max_bytes)
        self.max_inline_bytes = settings.upload_max_bytes
        self.parse_budget_s = parse_budget_s
        self.quota = Quota(
            max_documents=settings.ingest_tenant_max_pending_documents,
            max_bytes=settings.ingest_tenant_max_pending_bytes,
        )

    # ------------------------------------------------------------ endpoints

    async def submit(self, req: SubmitRequest, ctx: Context) -> SubmitResponse:
        tenant = tenant_of(ctx)
        await self._check_collection(ctx, req.collection_id)
        jobs: list[NewJob] = []
        written: list[str] = []  # inline bodies stored here, removed if the submit fails
        try:
            for doc in req.documents:
                jobs.append(await self._new_job(tenant, req.collection_id, doc, written))
            rows = await self.store.create(tenant, jobs, self.quota)
        except BaseException:
            for name in written:
                with contextlib.suppress(Exception):
                    await delete_object(self.js, name, tenant)
            raise
        published = []
        for job in jobs:
            try:
                await publish(
                    self.js,
                    PARSE_SUBJECT,
                    ParseJob(job_id=job.job_id),
                    ctx,
                    msg_id=job.job_id,
                    codec=self.codec,
                )
                published.append(job.job_id)
            except MeshError as exc:  # recorded: the sweeper publishes it later
                _log.warning("job_publish_deferred", job_id=job.job_id, code=exc.code)
        if published:
            await self.store.mark_published(tenant, published)
        return SubmitResponse(
            jobs=[
                JobRef(job_id=r["job_id"], source_id=r["source_id"], status="queued") for r in rows
            ]
        )

    async def _check_collection(self, ctx: Context, collection_id: str) -> None:
        """Refuse an unknown collection now rather than fail every job later; if RAG is
        not reachable, accept (the job waits in JetStream and fails there if need be)."""
        try:
            await self.client.call(
                rag.GET_COLLECTION,
                {"collection_id": collection_id},
                child(ctx, timeout=COLLECTION_CHECK_TIMEOUT_S),
            )
        except RetryableError as exc:
            _log.warning("collection_check_skipped", code=exc.code)

    async def _new_job(
        self, tenant: str, collection_id: str, doc: SubmitDocument, written: list[str]
    ) -> NewJob:
        if doc.object is not None:
            info = await object_info(self.js, doc.object.name, tenant)
            filename = doc.object.filename or header(info, FILENAME_HEADER)
            declared = doc.object.content_type or header(info, CONTENT_TYPE_HEADER)
            return NewJob(
                job_id=new_job_id(),
                collection_id=collection_id,
                source_id=doc.source_id or filename or doc.object.name,
                title=doc.title or _stem(filename),
                metadata=doc.metadata,
                filename=filename,
                declared_type=declared,
                object_name=doc.object.name,
                size=info.size,
            )
        if doc.text is not None:
            body = doc.text.encode()
            declared = doc.content_type or "text/plain"
            default_source = "text-" + hashlib.sha256(body).hexdigest()[:24]
        else:
            body = json.dumps(doc.data, ensure_ascii=False).encode()
            declared = "application/json"
            default_source = "json-" + hashlib.sha256(body).hexdigest()[:24]
        stored = await put_stream(
            self.js,
            tenant,
            [body],
            max_bytes=self.max_inline_bytes,
            content_type=declared,
            name=new_object_name("in"),
        )
        written.append(stored.name)
        return NewJob(
            job_id=new_job_id(),
            collection_id=collection_id,
            source_id=doc.source_id or default_source,
            title=doc.title,
            metadata=doc.metadata,
            filename=None,
            declared_type=declared,
            object_name=stored.name,
            size=stored.size,
        )

    async def get_job(self, req: GetJobRequest, ctx: Context) -> Job:
        row = await self.store.get(tenant_of(ctx), req.job_id)
        if row is None:
            raise NotFound(f"no job {req.job_id}")
        return to_job(row)

    async def list_jobs(self, req: ListJobsRequest, ctx: Context) -> ListJobsResponse:
        rows, cursor = await self.store.list(
            tenant_of(ctx),
            status=req.status,
            collection_id=req.collection_id,
            source_id=req.source_id,
            limit=req.limit,
            cursor=req.cursor,
        )
        return ListJobsResponse(jobs=[to_job(r) for r in rows], next_cursor=cursor)

    # ------------------------------------------------------------ consumers

    async def parse_job(self, job: ParseJob, ctx: Context) -> None:
        """``ingest.jobs.parse``: file → text → ``ingest.jobs.index``."""
        tenant = tenant_of(ctx)

        async def attempt() -> None:
            row = await self.store.start_parsing(tenant, job.job_id)
            if row is None:
                if await self.store.get(tenant, job.job_id) is None:
                    raise NotFound(f"no job {job.job_id}")
                return  # a redelivery of a job already handed on
            _, data = await read_object(
                self.js, row["object_name"], tenant, max_bytes=self.limits.max_bytes
            )
            sound = audio.kind_of(data)
            if sound is not None:
                parsed = await self._transcribe(ctx, sound, data, row["object_name"])
            else:
                parsed = await self._parse(tenant, data, row["filename"], row["declared_type"])
            text_object = await put_stream(
                self.js,
                tenant,
                [parsed.text.encode()],
                max_bytes=MAX_PARSED_BYTES,
                content_type="text/plain; charset=utf-8",
                name=f"parsed/{job.job_id}",
            )
            spans_object = await self._put_spans(tenant, job.job_id, parsed)
            title = row["title"] or parsed.title
            await self.store.parsed(tenant, job.job_id, parsed.content_type, title)
            metadata = row["metadata"]
            await publish(
                self.js,
                INDEX_SUBJECT,
                IndexJob(
                    job_id=job.job_id,
                    collection_id=row["collection_id"],
                    source_id=row["source_id"],
                    title=title,
                    metadata=metadata,
                    content_type=parsed.content_type,
                    text_object=text_object.name,
                    object_name=row["object_name"],
                    spans_object=spans_object,
                ),
                ctx,
                msg_id=f"{job.job_id}:index",
                codec=self.codec,
            )

        await until_available(attempt, stopping=self.stopping, what=f"parse {job.job_id}")

    async def _parse(
        self, tenant: str, data: bytes, filename: str | None, declared: str | None
    ) -> Parsed:
        """The file's text off the event loop; a PDF's scanned pages one OCR call each."""
        budget = OCR_PAGE_BUDGET_S if images.kind_of(data) else PARSE_BUDGET_S
        parsed = await _off_loop(
            parse,
            data,
            self.limits,
            filename=filename,
            content_type=declared,
            defer_ocr=True,
            budget=budget,
            tenant=tenant,
        )
        if not parsed.pending_ocr:
            return parsed
        units = list(parsed.units)
        for number in parsed.pending_ocr:
            units.append(
                await _off_loop(
                    pdf.ocr_page,
                    data,
                    number,
                    self.limits.image,
                    budget=OCR_PAGE_BUDGET_S,
                    tenant=tenant,
                )
            )
        return await _off_loop(
            finish_pdf, units, self.limits, parsed.title, budget=PARSE_BUDGET_S, tenant=tenant
        )

    async def _transcribe(self, ctx: Context, kind: str, data: bytes, object_name: str) -> Parsed:
        """A recording → timed transcript segments, through ``gateway.transcribe``."""
        audio.check_duration(kind, data, self.limits.max_audio_seconds)
        if len(data) > MAX_TRANSCRIBE_BYTES:
            raise ParseError(
                f"the recording has {len(data)} bytes, over the {MAX_TRANSCRIBE_BYTES}-byte "
                "limit of transcription"
            )
        request = TranscribeRequest(object_name=object_name, filename=f"recording.{kind}")
        try:
            out = await self.client.call(
                gateway.TRANSCRIBE, request, child(ctx, timeout=TRANSCRIBE_TIMEOUT_S)
            )
        except NotFound as exc:  # no transcription alias configured (or the named one)
            raise ParseError(f"the recording cannot be transcribed: {exc.message}") from None
        segments = [(s.start, s.end, s.text) for s in out.segments]
        return from_units(kind, audio.transcript_units(segments, out.text), self.limits)

    async def _put_spans(self, tenant: str, job_id: str, parsed: Parsed) -> str | None:
        """Where each part of the text comes from, beside the text, for RAG."""
        if not parsed.spans:
            return None
        body = json.dumps(
            [
                {
                    "start": s.start,
                    "end": s.end,
                    "location": s.location.model_dump(exclude_none=True, exclude={"label"}),
                }
                for s in parsed.spans
            ]
        ).encode()
        stored = await put_stream(
            self.js,
            tenant,
            [body],
            max_bytes=MAX_PARSED_BYTES,
            content_type="application/json",
            name=f"parsed/{job_id}.spans",
        )
        return stored.name

    async def parse_failed(self, job: ParseJob | None, ctx: Context | None, reason: str) -> None:
        if job is None or ctx is None or not ctx.tenant:
            _log.error("parse_job_unreadable", reason=reason)
            return
        tenant = ctx.tenant
        await until_available(
            lambda: self.store.fail(tenant, job.job_id, reason),
            stopping=self.stopping,
            what=f"fail {job.job_id}",
        )
        await self._drop_failed(tenant, job.job_id)

    async def _drop_failed(self, tenant: str, job_id: str) -> None:
        """A failed job's files are never read again: free their room in the bucket."""
        try:
            name = await self.store.failed_object(tenant, job_id)
            if name is not None:
                await delete_object(self.js, name, tenant)
            await delete_object(self.js, f"parsed/{job_id}", tenant)
        except Exception as exc:  # the job is marked failed; the files wait for a later try
            _log.warning("failed_job_cleanup_failed", job_id=job_id, error=type(exc).__name__)

    async def on_progress(self, event: JobProgress, ctx: Context) -> None:
        tenant = tenant_of(ctx)

        async def apply() -> bool:
            return await self.store.advance(
                tenant,
                event.job_id,
                event.stage,
                event.at,
                started=event.started,
                document_id=event.document_id,
                chunks=event.chunks,
                error=event.error,
            )

        if not await until_available(apply, stopping=self.stopping, what="progress"):
            _log.warning("progress_for_unknown_job", job_id=event.job_id)
        elif event.stage == "failed":
            await self._drop_failed(tenant, event.job_id)

    async def progress_failed(self, event: Any, ctx: Context | None, reason: str) -> None:
        _log.error("progress_event_dropped", reason=reason, job_id=getattr(event, "job_id", None))

    async def sweep(self, stop: asyncio.Event) -> None:
        """Every few seconds, publish jobs recorded but not yet in JetStream."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SWEEP_INTERVAL_S)
            if stop.is_set():
                return
            try:
                await self.sweep_once()
            except Exception as exc:  # Postgres or JetStream down: try again next round
                _log.warning("sweep_failed", error=type(exc).__name__)

    async def sweep_once(self, older_than_s: float = SWEEP_AGE_S) -> int:
        """Publish the jobs whose submit could not (the outbox); return how many."""
        rows = await self.store.unpublished(older_than_s, SWEEP_BATCH)
        for r in rows:
            await publish(
                self.js,
                PARSE_SUBJECT,
                ParseJob(job_id=r["job_id"]),
                new_context(r["tenant_id"]),
                msg_id=r["job_id"],
                codec=self.codec,
            )
            await self.store.mark_published(r["tenant_id"], [r["job_id"]])
        if rows:
            _log.info("jobs_republished", count=len(rows))
        return len(rows)


def build_worker(ing: Ingestion, codec: Codec | None = None, max_concurrency: int = 64) -> Worker:
    return Worker(
        "ingestion",
        endpoints=[
            Endpoint(ingestion.SUBMIT, ing.submit),
            Endpoint(ingestion.GET_JOB, ing.get_job),
            Endpoint(ingestion.LIST_JOBS, ing.list_jobs),
        ],
        version=VERSION,
        description="Uploads, parsing and ingestion jobs",
        codec=codec or Codec(),
        max_concurrency=max_concurrency,
    )


@asynccontextmanager
async def lifespan(
    env: WorkerEnv, settings: IngestionSettings | None = None
) -> AsyncIterator[Worker]:
    """The worker; ``settings`` default to the environment's (``UPLOAD_MAX_BYTES``)."""
    settings = settings or IngestionSettings()
    async with database(env.settings, "ingestion", "workers.ingestion") as db:
        codec = Codec(env.settings.codec_type)
        stopping = asyncio.Event()
        ing = Ingestion(db, env.js, env.client, settings, codec=codec, stopping=stopping)
        parse_consumer = JobConsumer(
            env.js, PARSE_CONSUMER, ParseJob, ing.parse_job, on_failed=ing.parse_failed, codec=codec
        )
        progress_consumer = JobConsumer(
            env.js,
            PROGRESS_CONSUMER,
            JobProgress,
            ing.on_progress,
            on_failed=ing.progress_failed,
            codec=codec,
        )
        # The pools stop after the consumers' in-flight jobs (the task group) finish.
        async with (
            offload.using(env.settings),
            background(stopping, parse_consumer.run, progress_consumer.run, ing.sweep),
        ):
            yield build_worker(ing, codec, min(env.settings.max_concurrency, 64))
