"""LLM Gateway contracts used by RAG: ``gateway.{embed,generate,count_tokens}.request``.

This is the subset of the Gateway Service's contract that RAG calls, with the same names
and shapes; the Gateway Service's own module (built in parallel) is the full version and
supersedes this one when the two are merged. Callers pick a model *alias* only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

#: Most texts one embed request may carry (OpenAI's limit for one embeddings call).
MAX_EMBED_TEXTS = 2_048
#: Most messages or texts one count request may carry.
MAX_COUNT_ITEMS = 10_000

Alias = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/@+-]{1,128}$")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Message(_Request):
    """A chat message in OpenAI's shape (text content only in this subset)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = Field(default=None, max_length=256)


class GenerateRequest(_Request):
    """``gateway.generate.request``."""

    model: Alias | None = Field(default=None, description="alias; omitted = the default")
    messages: list[Message] = Field(min_length=1, max_length=1_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    stop: str | list[str] | None = None
    seed: int | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[Any] | None = None


class GenerateResponse(BaseModel):
    model: str
    message: AssistantMessage
    finish_reason: str
    usage: Usage
    cost: float = 0.0


class EmbedRequest(_Request):
    model: Alias | None = Field(default=None, description="alias; omitted = the default")
    texts: list[str] = Field(min_length=1, max_length=MAX_EMBED_TEXTS)
    dimensions: int | None = Field(default=None, ge=1, le=65_536)


class EmbedResponse(BaseModel):
    model: str
    vectors: list[list[float]]
    usage: Usage
    cost: float = 0.0


class CountTokensMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1, max_length=64)
    content: str


class CountTokensRequest(BaseModel):
    """Exactly one of ``messages`` or ``texts``."""

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
    counts: list[int]
