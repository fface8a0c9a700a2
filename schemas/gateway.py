"""LLM Gateway contracts: ``gateway.count_tokens.request``.

The Prompt Service counts tokens through this endpoint so its budgets agree with the
gateway's tokenizer for the same model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Most messages or texts one count request may carry.
MAX_COUNT_ITEMS = 10_000


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
