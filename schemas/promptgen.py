"""Prompt Generator Service contracts: ``promptgen.<operation>.request``.

Agents and declarative tools written from plain language. A *spec* is exactly the Agent
Service's create body (``agent.create.request``, :class:`schemas.agent.AgentCreateRequest`)
or its declarative tool body (``agent.create_tool.request``,
:class:`schemas.agent.ToolCreateRequest`); it lives in numbered, immutable versions that
go ``draft → pending_review → approved → published`` (or ``rejected``). See
docs/services/promptgen.md for the behaviour behind each operation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.operations import Operation
from schemas.routes import Route

SpecKind = Literal["agent", "tool"]
SpecStatus = Literal["draft", "pending_review", "approved", "published", "rejected"]
Decision = Literal["approve", "reject"]
#: Ids made by the service: ``spec-<hex>``; run ids are the Agent Service's.
SpecId = Annotated[str, StringConstraints(pattern=r"^spec-[a-f0-9]{8,32}$")]
RunId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$")]
Alias = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/@+-]{1,128}$")]
Cursor = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_=-]{1,256}$")]
Version = Annotated[int, Field(ge=1, le=1_000_000)]
#: Free text stored in Postgres, which cannot hold NUL characters: refused up front.
_NO_NUL = r"^[^\x00]*$"

#: Longest plain-language prompt or refine instruction.
MAX_PROMPT_CHARS = 8_000
MAX_REASON_CHARS = 2_000
MAX_COMMENT_CHARS = 4_000
MAX_PAGE = 100
DEFAULT_PAGE = 20

#: Roles (from the JWT, ``ctx.roles``); docs/services/promptgen.md has the table.
ROLE_AUTHOR = "promptgen:author"
ROLE_REVIEWER = "promptgen:reviewer"
ROLE_PUBLISHER = "promptgen:publisher"
ROLE_ADMIN = "promptgen:admin"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- results shared by several operations -------------------------------------------


class Check(BaseModel):
    """One check of a spec before it is saved (and again before submit/approve/publish)."""

    name: str
    ok: bool
    message: str


class FieldChange(BaseModel):
    """One changed field between two versions; ``path`` is a JSON pointer (``/tools``)."""

    path: str
    op: Literal["added", "removed", "changed"]
    before: Any = None
    after: Any = None


class Generation(BaseModel):
    """How a version was produced: the model, the mode and the attempts it took."""

    model: str | None = None
    mode: Literal["response_format", "tool_call"] | None = None
    attempts: int = 0
    """Model calls made: 1 = valid at the first try; 2–3 = after repair rounds."""
    valid_first_try: bool = False
    errors: list[str] = Field(default_factory=list)
    """The validation and check errors sent back to the model in repair rounds."""
    notes: list[str] = Field(default_factory=list)
    """What the service changed after validation (e.g. approval added)."""


class FeedbackSummary(BaseModel):
    """Feedback on one version (given on the version itself or on runs of it)."""

    count: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    ratings: int = 0
    """How many 1–5 scores."""
    mean_rating: float | None = None


class SpecVersion(BaseModel):
    """A spec version: the answer of generate_agent, generate_tool, refine and get."""

    spec_id: str
    version: int
    kind: SpecKind
    status: SpecStatus
    spec: dict[str, Any]
    """The Agent Service body: ``agent.create`` (kind agent) or ``agent.create_tool``."""
    checks: list[Check]
    checks_passed: bool
    side_effects: list[str] = Field(default_factory=list)
    """Attached tools (or this tool's implementation) that act on the world."""
    diff: list[FieldChange] | None = None
    """Against ``base_version`` (refined versions only)."""
    base_version: int | None = None
    prompt: str | None = None
    """The prompt (version 1) or refine instruction that produced this version."""
    generation: Generation = Field(default_factory=Generation)
    created_by: str | None = None
    created_at: datetime | None = None
    reviewed_by: str | None = None
    review_reason: str | None = None
    published_by: str | None = None
    agent_id: str | None = None
    tool_name: str | None = None
    feedback: FeedbackSummary = Field(default_factory=FeedbackSummary)


class VersionSummary(BaseModel):
    version: int
    status: SpecStatus
    checks_passed: bool
    created_by: str | None = None
    created_at: datetime
    feedback: FeedbackSummary = Field(default_factory=FeedbackSummary)


class SpecSummary(BaseModel):
    spec_id: str
    kind: SpecKind
    name: str
    created_by: str | None = None
    created_at: datetime
    updated_at: datetime
    latest_version: int
    published_version: int | None = None
    agent_id: str | None = None
    tool_name: str | None = None
    latest_status: SpecStatus


# --- generate -----------------------------------------------------------------------


class GenerateRequest(_Request):
    """``promptgen.generate_agent`` / ``promptgen.generate_tool``."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=_NO_NUL)
    model: Alias | None = Field(
        default=None, description="gateway alias that writes the spec; the service's default"
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=_NO_NUL,
        description="the name to give the spec",
    )


class RefineRequest(_Request):
    spec_id: SpecId
    base_version: Version
    instruction: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        pattern=_NO_NUL,
        description="what to change; without it, the feedback on base_version is used",
    )
    model: Alias | None = None


# --- lifecycle ----------------------------------------------------------------------


class SubmitRequest(_Request):
    spec_id: SpecId
    version: Version
    reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS, pattern=_NO_NUL)


class ReviewRequest(_Request):
    spec_id: SpecId
    version: Version
    decision: Decision
    reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS, pattern=_NO_NUL)


class PublishRequest(_Request):
    spec_id: SpecId
    version: Version


class Transition(BaseModel):
    """The answer of submit, review and publish."""

    spec_id: str
    version: int
    status: SpecStatus
    agent_id: str | None = None
    tool_name: str | None = None
    checks: list[Check] = Field(default_factory=list)


# --- feedback -----------------------------------------------------------------------


class FeedbackRequest(_Request):
    """On a spec version (``spec_id`` + ``version``) or on a run of a published agent
    (``run_id``; the version is the one published when the run started)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [{"required": ["spec_id", "version"]}, {"required": ["run_id"]}]
        },
    )

    spec_id: SpecId | None = None
    version: Version | None = None
    run_id: RunId | None = None
    score: Annotated[int, Field(ge=1, le=5)] | Literal["up", "down"] = Field(
        description='1–5, or "up"/"down" (thumbs)'
    )
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS, pattern=_NO_NUL)

    @model_validator(mode="after")
    def _target(self) -> FeedbackRequest:
        if self.run_id is None and (self.spec_id is None or self.version is None):
            raise ValueError("give spec_id and version, or run_id")
        if self.version is not None and self.spec_id is None:
            raise ValueError("version needs spec_id")
        return self


class FeedbackResponse(BaseModel):
    feedback_id: str
    spec_id: str
    version: int
    run_id: str | None = None
    score: int | Literal["up", "down"]
    comment: str | None = None
    summary: FeedbackSummary


# --- reading ------------------------------------------------------------------------


class GetRequest(_Request):
    spec_id: SpecId
    version: Version | None = Field(default=None, description="the latest if omitted")


class SpecDetail(SpecVersion):
    """A version (the latest unless asked) with the spec's other versions."""

    name: str
    latest_version: int
    published_version: int | None = None
    versions: list[VersionSummary] = Field(default_factory=list)


class ListRequest(_Request):
    kind: SpecKind | None = None
    status: SpecStatus | None = Field(default=None, description="of the latest version")
    mine: bool = Field(default=False, description="only specs I created")
    cursor: Cursor | None = None
    limit: int = Field(default=DEFAULT_PAGE, ge=1, le=MAX_PAGE)


class SpecList(BaseModel):
    items: list[SpecSummary]
    next_cursor: str | None = None


class AuditRequest(_Request):
    spec_id: SpecId | None = Field(default=None, description="one spec; all of the tenant's")
    cursor: Cursor | None = None
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)


class AuditRecord(BaseModel):
    """One state change: who, when, from, to, which version, why."""

    audit_id: int
    spec_id: str
    version: int | None = None
    action: str
    """generate, refine, submit, approve, reject, publish, feedback."""
    actor: str | None = None
    from_status: SpecStatus | None = None
    to_status: SpecStatus | None = None
    reason: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    at: datetime


class AuditList(BaseModel):
    items: list[AuditRecord]
    next_cursor: str | None = None


# --- operations and routes ----------------------------------------------------------

GENERATE_AGENT = Operation(
    "promptgen",
    "generate_agent",
    GenerateRequest,
    SpecVersion,
    description="write a draft agent spec from a prompt",
)
GENERATE_TOOL = Operation(
    "promptgen",
    "generate_tool",
    GenerateRequest,
    SpecVersion,
    description="write a draft declarative tool spec from a prompt",
)
REFINE = Operation(
    "promptgen",
    "refine",
    RefineRequest,
    SpecVersion,
    description="the next version from an instruction or feedback, with a diff",
)
SUBMIT = Operation(
    "promptgen", "submit", SubmitRequest, Transition, description="send a draft to review"
)
REVIEW = Operation(
    "promptgen", "review", ReviewRequest, Transition, description="approve or reject a version"
)
PUBLISH = Operation(
    "promptgen",
    "publish",
    PublishRequest,
    Transition,
    description="create or update the agent or tool in the Agent Service, as the publisher",
)
FEEDBACK = Operation(
    "promptgen",
    "feedback",
    FeedbackRequest,
    FeedbackResponse,
    description="score a version or a run of a published agent",
)
GET = Operation(
    "promptgen", "get", GetRequest, SpecDetail, idempotent=True, description="read a spec"
)
LIST = Operation(
    "promptgen", "list", ListRequest, SpecList, idempotent=True, description="list specs"
)
AUDIT = Operation(
    "promptgen",
    "audit",
    AuditRequest,
    AuditList,
    idempotent=True,
    description="state changes, newest first",
)
OPERATIONS = (
    GENERATE_AGENT,
    GENERATE_TOOL,
    REFINE,
    SUBMIT,
    REVIEW,
    PUBLISH,
    FEEDBACK,
    GET,
    LIST,
    AUDIT,
)

_TAGS = ("promptgen",)
_BASE = "/api/v1/promptgen"
#: Generation runs a model up to three times (first try and two repairs).
_GENERATE_TIMEOUT_S = 180.0

# One route per operation (the OpenAPI operationId is the subject). ``version`` of get and
# ``spec_id`` of audit are query parameters.
ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        f"{_BASE}/agents",
        GENERATE_AGENT,
        status_code=201,
        summary="Generate a draft agent spec from a prompt",
        tags=_TAGS,
        timeout=_GENERATE_TIMEOUT_S,
    ),
    Route(
        "POST",
        f"{_BASE}/tools",
        GENERATE_TOOL,
        status_code=201,
        summary="Generate a draft tool spec from a prompt",
        tags=_TAGS,
        timeout=_GENERATE_TIMEOUT_S,
    ),
    Route("GET", f"{_BASE}/specs", LIST, summary="List specs", tags=_TAGS),
    Route("GET", f"{_BASE}/audit", AUDIT, summary="Audit records of the tenant", tags=_TAGS),
    Route("POST", f"{_BASE}/feedback", FEEDBACK, summary="Give feedback", tags=_TAGS),
    Route("GET", f"{_BASE}/specs/{{spec_id}}", GET, summary="Read a spec (a version)", tags=_TAGS),
    Route(
        "POST",
        f"{_BASE}/specs/{{spec_id}}/refine",
        REFINE,
        status_code=201,
        summary="Refine a version into the next one",
        tags=_TAGS,
        timeout=_GENERATE_TIMEOUT_S,
    ),
    Route(
        "POST",
        f"{_BASE}/specs/{{spec_id}}/versions/{{version}}/submit",
        SUBMIT,
        summary="Submit a draft for review",
        tags=_TAGS,
    ),
    Route(
        "POST",
        f"{_BASE}/specs/{{spec_id}}/versions/{{version}}/review",
        REVIEW,
        summary="Approve or reject a version",
        tags=_TAGS,
    ),
    Route(
        "POST",
        f"{_BASE}/specs/{{spec_id}}/versions/{{version}}/publish",
        PUBLISH,
        summary="Publish an approved version to the Agent Service",
        tags=_TAGS,
    ),
)
