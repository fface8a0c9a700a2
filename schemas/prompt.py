"""Prompt Service contracts: ``prompt.<operation>.request`` and the ``/api/v1/prompts`` routes.

Templates are versioned: every save is a new immutable version; labels point at versions.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from schemas.operations import Operation
from schemas.routes import Route

#: Largest template text, and largest content of one chat message, in characters.
MAX_TEMPLATE_CHARS = 100_000
#: Most messages in a chat template.
MAX_MESSAGES = 200
#: Largest config, JSON-encoded.
MAX_CONFIG_BYTES = 64 * 1024
#: Most labels set in one call.
MAX_LABELS = 32
#: Page size bounds for listings.
DEFAULT_PAGE = 50
MAX_PAGE = 200
#: The label a get or render without label or version resolves to.
DEFAULT_LABEL = "production"
#: Maintained automatically: always the highest existing version; cannot be set or moved.
LATEST = "latest"

# Names are unique per tenant and appear in routes and include references: no "/" and no ":".
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
# Labels start with a letter, so "name:3" (a version) never reads as a label.
Label = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9._-]{0,63}$")]
Variable = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Version = Annotated[int, Field(ge=1, le=2_147_483_647)]
TemplateType = Literal["text", "chat"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _not_both(a: str, b: str) -> dict[str, Any]:
    """The "not both" rules below, stated in the JSON schema too (OpenAPI clients and
    schemathesis generate requests from it)."""
    return {"not": {"required": [a, b]}}


# A label that may be set: anything but the automatic "latest" (JSON-schema form of
# _check_labels, for generated clients).
_SETTABLE: dict[str, Any] = {"items": {"not": {"const": LATEST}}}


class Message(BaseModel):
    """One chat message. In a chat template ``content`` is a template; ``role`` is literal."""

    model_config = ConfigDict(extra="forbid")

    role: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_-]{0,31}$")]
    content: str = Field(max_length=MAX_TEMPLATE_CHARS)


def _check_config(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if config is not None:
        size = len(json.dumps(config, default=str))
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"config is {size} bytes encoded; the limit is {MAX_CONFIG_BYTES}")
    return config


def _check_labels(labels: list[str] | None) -> list[str] | None:
    if labels and LATEST in labels:
        raise ValueError(f"'{LATEST}' is maintained automatically and cannot be set")
    return None if labels is None else list(dict.fromkeys(labels))


class _Content(_Request):
    """The versioned part of a template: its body, config and declared variables."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_not_both("template", "messages"))

    template: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS)
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)
    config: dict[str, Any] | None = Field(
        default=None, description="model alias, parameters: versioned with the template"
    )
    variables: list[Variable] | None = Field(
        default=None,
        max_length=256,
        description="declared on top of those discovered in the template",
    )
    labels: list[Label] | None = Field(
        default=None, max_length=MAX_LABELS, json_schema_extra=_SETTABLE
    )
    commit_message: str | None = Field(default=None, max_length=1000)

    @field_validator("config")
    @classmethod
    def _config_size(cls, config: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_config(config)

    @field_validator("labels")
    @classmethod
    def _no_latest(cls, labels: list[str] | None) -> list[str] | None:
        return _check_labels(labels)

    @model_validator(mode="after")
    def _one_body(self) -> _Content:
        if self.template is not None and self.messages is not None:
            raise ValueError("give template (text) or messages (chat), not both")
        if self.messages is not None:
            total = sum(len(m.content) for m in self.messages)
            if total > 2 * MAX_TEMPLATE_CHARS:
                raise ValueError(
                    f"messages hold {total} characters; the limit is {2 * MAX_TEMPLATE_CHARS}"
                )
        return self


class PromptCreateRequest(_Content):
    """Create a template and its version 1.

    ``labels`` omitted means ``["production"]`` (a new template renders by default);
    ``labels: []`` creates an unlabelled draft.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {
                    "properties": {"type": {"const": "text"}, "template": {"type": "string"}},
                    "required": ["template"],
                    "not": {"required": ["messages"]},
                },
                {
                    "properties": {"type": {"const": "chat"}, "messages": {"type": "array"}},
                    "required": ["messages"],
                    "not": {"required": ["template"]},
                },
            ]
        },
    )

    name: Name
    type: TemplateType

    @model_validator(mode="after")
    def _body_matches_type(self) -> PromptCreateRequest:
        if self.type == "text" and self.template is None:
            raise ValueError("a text template needs 'template'")
        if self.type == "chat" and self.messages is None:
            raise ValueError("a chat template needs 'messages'")
        return self


class PromptCreateResponse(BaseModel):
    template_id: str
    name: str
    version: int


class PromptUpdateRequest(_Content):
    """Save a new version on top of ``base_version``, which must be the latest version.

    Omitted ``template``/``messages``, ``config`` and ``variables`` are carried over from
    the base version; ``labels`` are moved onto the new version in the same transaction.
    """

    name: Name
    base_version: Version


class PromptUpdateResponse(BaseModel):
    template_id: str
    name: str
    version: int


class PromptGetRequest(_Request):
    """By ``version``, or by ``label`` (default ``production``; ``latest`` is the newest)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_not_both("label", "version"))

    name: Name
    label: Label | None = None
    version: Version | None = None

    @model_validator(mode="after")
    def _label_or_version(self) -> PromptGetRequest:
        if self.label is not None and self.version is not None:
            raise ValueError("give label or version, not both")
        return self


class PromptVersion(BaseModel):
    """One immutable version of a template."""

    template_id: str
    name: str
    type: TemplateType
    version: int
    template: str | None = None
    messages: list[Message] | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    variables: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list, description="labels on this version")
    latest_version: int
    commit_message: str | None = None
    created_by: str | None = None
    created_at: datetime


class PromptListRequest(_Request):
    query: str | None = Field(default=None, max_length=128, description="substring of the name")
    label: Label | None = Field(default=None, description="only templates carrying this label")
    limit: int = Field(default=DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    cursor: Name | None = Field(
        default=None, description="the previous page's next_cursor: list names after this one"
    )


class PromptSummary(BaseModel):
    template_id: str
    name: str
    type: TemplateType
    latest_version: int
    labels: dict[str, int] = Field(description="label → version, latest included")
    created_at: datetime
    updated_at: datetime


class PromptListResponse(BaseModel):
    items: list[PromptSummary]
    next_cursor: str | None = None


class PromptListVersionsRequest(_Request):
    name: Name
    limit: int = Field(default=DEFAULT_PAGE, ge=1, le=MAX_PAGE)
    cursor: Version | None = Field(
        default=None, description="the previous page's next_cursor: list versions below this one"
    )


class VersionSummary(BaseModel):
    version: int
    labels: list[str]
    commit_message: str | None = None
    created_by: str | None = None
    created_at: datetime


class PromptListVersionsResponse(BaseModel):
    name: str
    items: list[VersionSummary]
    next_cursor: int | None = None


class PromptSetLabelRequest(_Request):
    """Point ``label`` at ``version`` (moving it if it pointed elsewhere), atomically."""

    name: Name
    label: Label = Field(json_schema_extra={"not": {"const": LATEST}})
    version: Version

    @field_validator("label")
    @classmethod
    def _not_latest(cls, label: str) -> str:
        if label == LATEST:
            raise ValueError(f"'{LATEST}' is maintained automatically and cannot be set")
        return label


class PromptSetLabelResponse(BaseModel):
    name: str
    label: str
    version: int
    previous_version: int | None = None


class PromptUnsetLabelRequest(_Request):
    name: Name
    label: Label


class PromptUnsetLabelResponse(BaseModel):
    name: str
    label: str
    version: int = Field(description="the version the label pointed at")


class PromptDeleteRequest(_Request):
    name: Name


class PromptDeleteResponse(BaseModel):
    name: str
    deleted_versions: int


class PromptDeleteVersionRequest(_Request):
    name: Name
    version: Version


class PromptDeleteVersionResponse(BaseModel):
    name: str
    version: int
    latest_version: int


class PromptDiffRequest(_Request):
    name: Name
    from_version: Version
    to_version: Version


class ConfigChange(BaseModel):
    key: str
    before: Any = None
    after: Any = None
    change: Literal["added", "removed", "changed"]


class PromptDiffResponse(BaseModel):
    name: str
    from_version: int
    to_version: int
    changed: bool
    diff: str = Field(description="unified diff of the template text or the messages")
    config_changes: list[ConfigChange]
    variables_added: list[str]
    variables_removed: list[str]


class PromptRenderRequest(_Request):
    """Fill ``variables`` into a version chosen by ``version`` or ``label`` (default
    ``production``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_not_both("label", "version"))

    name: Name
    label: Label | None = None
    version: Version | None = None
    variables: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _label_or_version(self) -> PromptRenderRequest:
        if self.label is not None and self.version is not None:
            raise ValueError("give label or version, not both")
        return self


class PromptRenderResponse(BaseModel):
    name: str
    version: int
    type: TemplateType
    text: str | None = None
    messages: list[Message] | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class PromptRef(_Request):
    """A template to render as part of a larger request."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_not_both("label", "version"))

    name: Name
    label: Label | None = None
    version: Version | None = None
    variables: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _label_or_version(self) -> PromptRef:
        if self.label is not None and self.version is not None:
            raise ValueError("give label or version, not both")
        return self


class Passage(_Request):
    """A retrieved passage and where it came from."""

    source_id: str = Field(min_length=1, max_length=512)
    text: str = Field(max_length=1_000_000)
    score: float | None = None


DEFAULT_PASSAGES_INTRO = "Use the following passages to answer. Cite them by source id."


class PromptContextRequest(_Request):
    """Assemble a message list under ``budget_tokens`` (prompt tokens, counted by the gateway).

    Priority, highest first: the system part and ``query`` (never dropped), then
    ``passages`` in the order given (best first), then ``history`` newest first — or
    history before passages with ``prefer="history"``. The lowest-priority parts are
    dropped first; the boundary passage may be truncated.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_not_both("system", "system_text"))

    model: str | None = Field(default=None, max_length=256)
    budget_tokens: int = Field(ge=1, le=10_000_000)
    system: PromptRef | None = None
    system_text: str | None = Field(default=None, max_length=MAX_TEMPLATE_CHARS)
    history: list[Message] = Field(default_factory=list, max_length=2000)
    passages: list[Passage] = Field(default_factory=list, max_length=1000)
    query: str | None = Field(default=None, max_length=1_000_000)
    prefer: Literal["passages", "history"] = "passages"
    passages_intro: str = Field(default=DEFAULT_PASSAGES_INTRO, max_length=2000)
    min_truncate_tokens: int = Field(
        default=32, ge=1, description="truncate a passage only if this many of its tokens fit"
    )

    @model_validator(mode="after")
    def _one_system(self) -> PromptContextRequest:
        if self.system is not None and self.system_text is not None:
            raise ValueError("give system (a template) or system_text, not both")
        return self


class OmittedPart(BaseModel):
    kind: Literal["passage", "history"]
    index: int = Field(description="position in the request's passages or history")
    source_id: str | None = None
    tokens: int = Field(description="tokens of the whole part")
    action: Literal["dropped", "truncated"]
    kept_tokens: int = 0


class TemplateUsed(BaseModel):
    name: str
    version: int


class PromptContextResponse(BaseModel):
    model: str | None = None
    messages: list[Message]
    total_tokens: int
    budget_tokens: int
    estimated: bool = Field(
        description="true when no gateway answered and counts are a conservative estimate"
    )
    system: TemplateUsed | None = None
    passages_used: list[str] = Field(description="source ids of the passages included, in order")
    history_used: int = Field(description="how many of the newest history messages are included")
    omitted: list[OmittedPart]


_TAGS = ("prompts",)


CREATE = Operation(
    "prompt",
    "create",
    PromptCreateRequest,
    PromptCreateResponse,
    idempotent=False,
    description="create a template (version 1)",
)
UPDATE = Operation(
    "prompt",
    "update",
    PromptUpdateRequest,
    PromptUpdateResponse,
    idempotent=False,
    description="save a new version on top of base_version",
)
GET = Operation(
    "prompt",
    "get",
    PromptGetRequest,
    PromptVersion,
    idempotent=True,
    description="a version by label or number",
)
LIST = Operation(
    "prompt",
    "list",
    PromptListRequest,
    PromptListResponse,
    idempotent=True,
    description="list or search templates",
)
LIST_VERSIONS = Operation(
    "prompt",
    "list_versions",
    PromptListVersionsRequest,
    PromptListVersionsResponse,
    idempotent=True,
    description="a template's versions, newest first",
)
SET_LABEL = Operation(
    "prompt",
    "set_label",
    PromptSetLabelRequest,
    PromptSetLabelResponse,
    idempotent=True,
    description="point a label",
)
UNSET_LABEL = Operation(
    "prompt",
    "unset_label",
    PromptUnsetLabelRequest,
    PromptUnsetLabelResponse,
    idempotent=True,
    description="remove a label",
)
DELETE = Operation(
    "prompt",
    "delete",
    PromptDeleteRequest,
    PromptDeleteResponse,
    idempotent=True,
    description="delete a template",
)
DELETE_VERSION = Operation(
    "prompt",
    "delete_version",
    PromptDeleteVersionRequest,
    PromptDeleteVersionResponse,
    idempotent=True,
    description="delete an unlabelled version",
)
DIFF = Operation(
    "prompt",
    "diff",
    PromptDiffRequest,
    PromptDiffResponse,
    idempotent=True,
    description="diff two versions",
)
RENDER = Operation(
    "prompt",
    "render",
    PromptRenderRequest,
    PromptRenderResponse,
    idempotent=True,
    description="render with variables",
)
CONTEXT = Operation(
    "prompt",
    "context",
    PromptContextRequest,
    PromptContextResponse,
    idempotent=True,
    description="build a message list under a token budget",
)
OPERATIONS = (
    CREATE,
    UPDATE,
    GET,
    LIST,
    LIST_VERSIONS,
    SET_LABEL,
    UNSET_LABEL,
    DELETE,
    DELETE_VERSION,
    DIFF,
    RENDER,
    CONTEXT,
)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/api/v1/prompts",
        CREATE,
        status_code=201,
        summary="Create a template (version 1)",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/prompts",
        LIST,
        summary="List or search templates (cursor pagination)",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/prompts/context",
        CONTEXT,
        summary="Build a message list under a token budget",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/prompts/{name}",
        GET,
        summary="Get a version by label (default production) or version",
        tags=_TAGS,
    ),
    Route(
        "DELETE",
        "/api/v1/prompts/{name}",
        DELETE,
        summary="Delete a template with all its versions and labels",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/prompts/{name}/versions",
        UPDATE,
        status_code=201,
        summary="Save a new version on top of base_version (409 if stale)",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/prompts/{name}/versions",
        LIST_VERSIONS,
        summary="List a template's versions, newest first",
        tags=_TAGS,
    ),
    Route(
        "DELETE",
        "/api/v1/prompts/{name}/versions/{version}",
        DELETE_VERSION,
        summary="Delete one unlabelled version",
        tags=_TAGS,
    ),
    Route(
        "PUT",
        "/api/v1/prompts/{name}/labels/{label}",
        SET_LABEL,
        summary="Point a label at a version",
        tags=_TAGS,
    ),
    Route(
        "DELETE",
        "/api/v1/prompts/{name}/labels/{label}",
        UNSET_LABEL,
        summary="Remove a label",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/prompts/{name}/render",
        RENDER,
        summary="Render a version with variables",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/prompts/{name}/diff",
        DIFF,
        summary="Diff two versions (from_version, to_version query parameters)",
        tags=_TAGS,
    ),
)
