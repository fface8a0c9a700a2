"""LLM Gateway contracts used by other services (the gateway's own module extends these).

``gateway.generate.request`` / ``gateway.stream.request`` take a :class:`GenerateRequest`
in the OpenAI chat shape; ``gateway.embed.request`` and ``gateway.count_tokens.request``
embed texts and count tokens. Responses ignore fields this side does not know, so the
gateway can grow them freely.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Default model aliases of the gateway's model list.
DEFAULT_CHAT_MODEL = "local-chat"
DEFAULT_EMBED_MODEL = "local-embed"
DEFAULT_EMBED_DIMENSIONS = 384


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCall(_Response):
    name: str
    arguments: str = "{}"
    """The arguments as a JSON text, exactly as the model produced them."""


class ToolCall(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class GenerateRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = None
    max_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    """OpenAI tool definitions: ``{"type": "function", "function": {name, ...}}``."""
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    stop: list[str] | None = None
    seed: int | None = None
    cache: bool | None = None


class Usage(_Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class GenerateResponse(_Response):
    model: str
    message: AssistantMessage
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost: float | None = None


class ToolCallDelta(_Response):
    """One fragment of a streamed tool call (OpenAI's ``delta.tool_calls[i]``)."""

    index: int = 0
    id: str | None = None
    type: str | None = None
    function: dict[str, Any] | None = None


class StreamDelta(_Response):
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class StreamChunk(_Response):
    delta: StreamDelta = Field(default_factory=StreamDelta)
    model: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None


class EmbedRequest(BaseModel):
    model: str | None = None
    texts: list[str] = Field(min_length=1)
    dimensions: int | None = None


class EmbedResponse(_Response):
    model: str
    vectors: list[list[float]]
    usage: Usage | None = None


class CountTokensRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] | None = None
    texts: list[str] | None = None


class CountTokensResponse(_Response):
    model: str
    total: int
    counts: list[int] = Field(default_factory=list)
