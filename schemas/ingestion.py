"""Data Ingestion Service contracts: ``ingestion.{submit,get_job,list_jobs}.request``, the
JetStream job messages it hands to RAG, and the job-progress event RAG sends back.

Flow: files are streamed into the object store bucket ``uploads`` (``bus.uploads``), then
``ingestion.submit.request`` creates one job per document and publishes it to
``ingest.jobs.parse``; ingestion's durable consumer parses it and publishes
``ingest.jobs.index``; RAG's durable consumer chunks, embeds and stores it and reports
each stage on ``events.domain.ingestion.job``, which ingestion's consumer records.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.operations import Operation
from schemas.routes import Route

#: JetStream subjects (stream INGEST) and the progress event (stream EVENTS).
PARSE_SUBJECT = "ingest.jobs.parse"
INDEX_SUBJECT = "ingest.jobs.index"
PROGRESS_SUBJECT = "events.domain.ingestion.job"

#: The multipart upload route the bridge serves itself (see docs/services/ingestion.md).
UPLOAD_PATH = "/api/v1/ingestion/upload"

#: Most documents one submit may carry.
MAX_BATCH = 100
#: Largest uploaded or submitted file unless ``UPLOAD_MAX_BYTES`` says otherwise (the
#: bridge answers 413 above it; ingestion fails such a document).
DEFAULT_UPLOAD_MAX_BYTES = 25 * 1024 * 1024
#: Largest inline text or JSON document, in characters of text / bytes of JSON.
MAX_INLINE_CHARS = 2_000_000

Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
SourceId = Annotated[str, StringConstraints(min_length=1, max_length=512)]
ObjectName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./=-]{1,256}$")]

JobStatus = Literal["queued", "parsing", "chunking", "embedding", "indexed", "failed"]
#: Order of the non-terminal stages; ``indexed`` and ``failed`` are terminal.
STAGES: tuple[str, ...] = ("queued", "parsing", "chunking", "embedding", "indexed")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectRef(_Request):
    """A file already in the ``uploads`` bucket, as ``bus.uploads.put_stream`` returned it."""

    name: ObjectName
    filename: str | None = Field(default=None, max_length=512)
    content_type: str | None = Field(default=None, max_length=256)
    size: int | None = Field(default=None, ge=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class SubmitDocument(_Request):
    """One document: an uploaded ``object``, inline ``text``, or an inline JSON ``data``."""

    source_id: SourceId | None = Field(
        default=None,
        description="stable id of the document in its source; re-submitting the same "
        "source id replaces the document. Default: the file name, or a hash of the text",
    )
    title: str | None = Field(default=None, max_length=1000)
    metadata: dict[str, Any] = Field(default_factory=dict)
    object: ObjectRef | None = None
    text: str | None = Field(default=None, max_length=MAX_INLINE_CHARS)
    data: Any = Field(default=None, description="a JSON document (object or array)")
    content_type: str | None = Field(
        default=None, max_length=256, description="hint for inline text: text/markdown, ..."
    )

    @model_validator(mode="after")
    def _one_body(self) -> SubmitDocument:
        given = sum(x is not None for x in (self.object, self.text, self.data))
        if given != 1:
            raise ValueError("give exactly one of object, text or data")
        return self


class SubmitRequest(_Request):
    collection_id: Id
    documents: list[SubmitDocument] = Field(min_length=1, max_length=MAX_BATCH)


class JobRef(BaseModel):
    job_id: str
    source_id: str
    status: JobStatus


class SubmitResponse(BaseModel):
    jobs: list[JobRef]


class Job(BaseModel):
    job_id: str
    collection_id: str
    source_id: str
    filename: str | None = None
    content_type: str | None = Field(default=None, description="detected from the content")
    size: int | None = None
    status: JobStatus
    attempts: int = 0
    error: str | None = None
    document_id: str | None = None
    chunks: int | None = None
    timings: dict[str, datetime] = Field(
        default_factory=dict, description="when each stage was entered"
    )
    created_at: datetime
    updated_at: datetime


class GetJobRequest(_Request):
    job_id: Id


class ListJobsRequest(_Request):
    status: JobStatus | None = None
    collection_id: Id | None = None
    source_id: SourceId | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=256)


class ListJobsResponse(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = None


# ---------------------------------------------------------------- JetStream messages


class ParseJob(BaseModel):
    """``ingest.jobs.parse``: the job row in ingestion's schema holds the rest."""

    job_id: str


class IndexJob(BaseModel):
    """``ingest.jobs.index``: parsed text for RAG to chunk, embed and store."""

    job_id: str
    collection_id: str
    source_id: str
    title: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    content_type: str
    text_object: str = Field(description="the parsed text, UTF-8, in the uploads bucket")
    object_name: str | None = Field(
        default=None, description="the original upload, deleted with the document"
    )
    spans_object: str | None = Field(
        default=None,
        description="where each part of the text comes from (pages, rows, slides, times): "
        "a JSON list of schemas.locations.Span in the uploads bucket",
    )


#: The stages RAG reports for an ingestion job.
ProgressStage = Literal["chunking", "embedding", "indexed", "failed"]


class JobProgress(BaseModel):
    """``events.domain.ingestion.job``: RAG reports a stage of an ingestion job."""

    job_id: str
    stage: ProgressStage
    started: bool = Field(default=False, description="a new processing attempt begins")
    document_id: str | None = None
    chunks: int | None = None
    error: str | None = None
    at: datetime


_TAGS = ("ingestion",)


SUBMIT = Operation(
    "ingestion",
    "submit",
    SubmitRequest,
    SubmitResponse,
    idempotent=False,
    description="queue documents for ingestion; answers with job ids at once",
)
GET_JOB = Operation(
    "ingestion", "get_job", GetJobRequest, Job, idempotent=True, description="one job"
)
LIST_JOBS = Operation(
    "ingestion",
    "list_jobs",
    ListJobsRequest,
    ListJobsResponse,
    idempotent=True,
    description="jobs, filtered",
)
OPERATIONS = (
    SUBMIT,
    GET_JOB,
    LIST_JOBS,
)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/api/v1/ingestion/documents",
        SUBMIT,
        status_code=202,
        summary="Queue inline or already-uploaded documents for ingestion",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/ingestion/jobs/{job_id}",
        GET_JOB,
        summary="One ingestion job with its stage, attempts, timings and error",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/ingestion/jobs",
        LIST_JOBS,
        summary="Ingestion jobs, newest first, filtered by status, collection or source",
        tags=_TAGS,
    ),
)
