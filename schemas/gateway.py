"""LLM Gateway contracts: ``gateway.{generate,stream,embed,models,count_tokens,transcribe}``,
and the LLMOps event the gateway publishes for every LLM call.

Callers pick a model *alias* only. Every request model forbids unknown fields, so no
request can carry ``api_base``, keys, headers or any other provider setting: those come
from the gateway's configuration alone (the SSRF and key-leak class of bug of proxies
that let a request override them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.operations import Operation
from schemas.routes import Route

#: The aliases served with no GATEWAY_MODELS configured (offline local models), and the
#: dimension of the local embedding model. Callers may omit ``model`` to get the default.
DEFAULT_CHAT_MODEL = "local-chat"
DEFAULT_EMBED_MODEL = "local-embed"
DEFAULT_EMBED_DIMENSIONS = 384

#: Most messages one generate/stream request may carry.
MAX_MESSAGES = 1_000
#: Most texts one embed request may carry (OpenAI's limit for one embeddings call).
MAX_EMBED_TEXTS = 2_048
#: Most tools one request may declare (OpenAI's limit).
MAX_TOOLS = 128
#: Most messages or texts one count request may carry.
MAX_COUNT_ITEMS = 10_000

#: JetStream subject of the event published for every LLM call (stream LLMOPS).
LLMOPS_SUBJECT = "events.llmops.operation"

Alias = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/@+-]{1,128}$")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- messages and tools


class ImageURL(_Request):
    url: str = Field(max_length=20_000_000)
    detail: Literal["auto", "low", "high"] | None = None

    @model_validator(mode="after")
    def _safe_scheme(self) -> ImageURL:
        # Some providers make litellm fetch an image URL itself (to inline it): allow only
        # inline data and https, never http://internal-host/ or file://.
        if not self.url.startswith(("data:", "https://")):
            raise ValueError("image_url.url must be a data: URL or an https:// URL")
        return self


class ContentPart(_Request):
    """One part of a multi-part message: text, or an image."""

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None

    @model_validator(mode="after")
    def _matches_type(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs text")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an image_url part needs image_url")
        return self


class FunctionCall(_Request):
    # OpenAI's rule for function names; providers (and litellm's own transforms) fail on
    # anything else, so it is refused here as invalid_request instead.
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    arguments: str = Field(max_length=1_000_000, description="JSON text, as the model wrote it")


class ToolCall(_Request):
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Request):
    """A chat message in OpenAI's shape."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _has_content(self) -> Message:
        # As OpenAI: only an assistant message carrying tool calls may omit content
        # (litellm's transforms fail on the others, far from the caller's input).
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self


class FunctionSpec(_Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(default=None, max_length=100_000)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"] = "function"
    function: FunctionSpec


class ToolChoiceFunction(_Request):
    name: str = Field(max_length=64)


class ToolChoice(_Request):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


class JsonSchemaFormat(_Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class ResponseFormat(_Request):
    """``text``, ``json_object``, or ``json_schema`` with a JSON Schema to follow."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema")
        return self


class CacheControl(_Request):
    """Per-request cache settings. Giving this object opts the request into the cache even
    when its temperature is not 0."""

    ttl: int | None = Field(default=None, ge=1, le=30 * 24 * 3600, description="seconds")
    no_cache: bool = Field(default=False, description="do not read a cached answer")
    no_store: bool = Field(default=False, description="do not store this answer")


# ---------------------------------------------------------------- generate / stream


class GenerateRequest(_Request):
    """``gateway.generate.request`` and ``gateway.stream.request``."""

    model: Alias | None = Field(default=None, description="alias; omitted = the default")
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None
    response_format: ResponseFormat | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    cache: CacheControl | None = None

    @model_validator(mode="after")
    def _bounded_stop(self) -> GenerateRequest:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return self


class Usage(BaseModel):
    prompt_tokens: int = Field(default=0, description="every input token, cached ones included")
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens_read: int = Field(
        default=0, description="input tokens read from the provider's prompt cache"
    )
    cached_tokens_write: int = Field(
        default=0, description="input tokens written to the provider's prompt cache"
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class GenerateResponse(BaseModel):
    model: str = Field(description="the alias that answered (a fallback's, if one did)")
    message: AssistantMessage
    finish_reason: str
    usage: Usage
    cost: float = Field(description="USD; 0 for local models and cache hits")
    cached: bool = False


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class Delta(BaseModel):
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class GenerateChunk(BaseModel):
    """One chunk of ``gateway.stream.request``; the last carries ``finish_reason`` and
    ``usage`` (and ``cost``)."""

    delta: Delta = Field(default_factory=Delta)
    model: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    cost: float | None = None
    cached: bool | None = None


# ---------------------------------------------------------------- embed


class EmbedRequest(_Request):
    model: Alias | None = Field(default=None, description="alias; omitted = the default")
    texts: list[str] = Field(min_length=1, max_length=MAX_EMBED_TEXTS)
    dimensions: int | None = Field(default=None, ge=1, le=65_536)


class EmbedResponse(BaseModel):
    model: str
    vectors: list[list[float]]
    usage: Usage
    cost: float = 0.0


# ---------------------------------------------------------------- transcribe

#: Largest recording ``gateway.transcribe`` sends (OpenAI's limit for its audio API).
MAX_TRANSCRIBE_BYTES = 25 * 1024 * 1024
#: Largest recording sent inline in the request (NATS carries at most 8 MiB a message).
MAX_INLINE_AUDIO_BYTES = 6 * 1024 * 1024


class TranscribeRequest(_Request):
    """A recording to transcribe: inline ``audio`` or ``object_name``, a file the tenant
    uploaded to the ``uploads`` object store bucket (``bus.uploads``)."""

    model: Alias | None = Field(
        default=None, description="transcription alias; omitted = the default"
    )
    audio: bytes | None = Field(default=None, max_length=MAX_INLINE_AUDIO_BYTES)
    object_name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./=-]{1,256}$")] | None = (
        None
    )
    filename: str = Field(
        default="audio.wav",
        max_length=256,
        pattern=r"^[^/\\]+\.[A-Za-z0-9]{1,8}$",
        description="the extension tells the provider the format (wav, mp3, m4a, ogg...)",
    )
    language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}$", description="ISO-639-1")
    prompt: str | None = Field(default=None, max_length=2_000)

    @model_validator(mode="after")
    def _one_source(self) -> TranscribeRequest:
        if (self.audio is None) == (self.object_name is None):
            raise ValueError("give exactly one of audio or object_name")
        return self


class TranscriptSegment(BaseModel):
    start: float = Field(ge=0, description="seconds from the start of the recording")
    end: float = Field(ge=0)
    text: str


class TranscribeResponse(BaseModel):
    model: str = Field(description="the alias that answered")
    text: str
    language: str | None = None
    duration: float | None = Field(default=None, description="seconds, when the provider says")
    segments: list[TranscriptSegment] = Field(
        default_factory=list, description="timed segments (empty if the provider gave none)"
    )
    cost: float = 0.0


# ---------------------------------------------------------------- models


class ModelsRequest(_Request):
    pass


class ModelInfo(BaseModel):
    """A configured alias: never its api_base, keys or headers."""

    alias: str
    provider: str
    mode: Literal["chat", "embedding", "audio_transcription"]
    context_window: int | None = None
    max_output_tokens: int | None = None
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    dimensions: int | None = None
    default: bool = False
    fallbacks: list[str] = Field(default_factory=list)


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


# ---------------------------------------------------------------- count_tokens


class CountTokensMessage(BaseModel):
    """A chat message to count: ``{role, content}`` (other OpenAI message keys pass through)."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1, max_length=64)
    content: str


class CountTokensRequest(BaseModel):
    """Exactly one of ``messages`` (chat-formatted, with per-message overhead) or ``texts``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, max_length=256)
    messages: list[CountTokensMessage] | None = Field(default=None, max_length=MAX_COUNT_ITEMS)
    texts: list[str] | None = Field(default=None, max_length=MAX_COUNT_ITEMS)

    @model_validator(mode="after")
    def _exactly_one(self) -> CountTokensRequest:
        if (self.messages is None) == (self.texts is None):
            raise ValueError("give exactly one of messages or texts")
        return self


class CountTokensResponse(BaseModel):
    model: str
    total: int = Field(ge=0)
    """For messages, the whole prompt as the model sees it (may exceed the sum of counts)."""
    counts: list[int]
    """One count per message or text, in request order."""


# ---------------------------------------------------------------- LLMOps event


#: The gateway operations an LLMOps event reports.
LLMOpsOperation = Literal["generate", "stream", "embed", "transcribe"]


class LLMOpsEvent(BaseModel):
    """One LLM call, published to ``events.llmops.operation`` (stream ``LLMOPS``).

    ``Nats-Msg-Id`` is the call's request id, so a retried publish is deduplicated.
    """

    event_id: str
    time_ms: int = Field(description="when the call started, Unix epoch milliseconds")
    operation: LLMOpsOperation
    tenant: str | None = None
    user: str | None = None
    correlation_id: str | None = None
    request_id: str | None = None
    model: str = Field(description="the alias asked for")
    served_by: str | None = Field(default=None, description="the alias that answered")
    provider: str | None = None
    provider_model: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cached_tokens_read: int | None = None
    cached_tokens_write: int | None = None
    cost: float = Field(default=0.0, description="USD, each token kind at its own price")
    latency_ms: float = 0.0
    ttft_ms: float | None = Field(default=None, description="time to first token (streams)")
    cache_hit: bool = False
    attempts: int = 0
    status: Literal["ok", "error"] = "ok"
    error_code: str | None = Field(
        default=None, description='an error code of the contract, or "cancelled"'
    )
    prompt: Any = Field(default=None, description="only when the gateway logs content")
    completion: Any = None


# ---------------------------------------------------------------- HTTP routes


GENERATE = Operation(
    "gateway",
    "generate",
    GenerateRequest,
    GenerateResponse,
    idempotent=False,
    description="chat completion from a model alias",
)
STREAM = Operation(
    "gateway",
    "stream",
    GenerateRequest,
    GenerateChunk,
    idempotent=False,
    streaming=True,
    description="chat completion as chunks, the last with usage",
)
EMBED = Operation(
    "gateway",
    "embed",
    EmbedRequest,
    EmbedResponse,
    idempotent=True,
    description="vectors for a batch of texts",
)
MODELS = Operation(
    "gateway",
    "models",
    ModelsRequest,
    ModelsResponse,
    idempotent=True,
    description="the configured aliases",
)
COUNT_TOKENS = Operation(
    "gateway",
    "count_tokens",
    CountTokensRequest,
    CountTokensResponse,
    idempotent=True,
    description="token counts with the alias's tokenizer",
)
TRANSCRIBE = Operation(
    "gateway",
    "transcribe",
    TranscribeRequest,
    TranscribeResponse,
    idempotent=False,
    description="speech to text with timed segments, from an audio_transcription alias",
)
OPERATIONS = (
    GENERATE,
    STREAM,
    EMBED,
    MODELS,
    COUNT_TOKENS,
    TRANSCRIBE,
)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/api/v1/gateway/generate",
        GENERATE,
        summary="Generate a chat completion",
        tags=("gateway",),
    ),
    Route(
        "POST",
        "/api/v1/gateway/stream",
        STREAM,
        summary="Stream a chat completion as Server-Sent Events",
        tags=("gateway",),
    ),
    Route(
        "POST", "/api/v1/gateway/embed", EMBED, summary="Embed a batch of texts", tags=("gateway",)
    ),
    Route(
        "GET",
        "/api/v1/gateway/models",
        MODELS,
        summary="List the configured model aliases",
        tags=("gateway",),
    ),
    Route(
        "POST",
        "/api/v1/gateway/count_tokens",
        COUNT_TOKENS,
        summary="Count tokens as a model's tokenizer does",
        tags=("gateway",),
    ),
)
