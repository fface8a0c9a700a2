"""Prompt Service contracts used by other services (the prompt module extends these).

Named as in the Prompt Service's own module, so a merge keeps its (larger) definitions.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.gateway import ChatMessage


class PromptRenderRequest(BaseModel):
    name: str
    label: str | None = None
    version: int | None = None
    variables: dict[str, Any] = Field(default_factory=dict)


class PromptRenderResponse(BaseModel):
    name: str
    version: int
    type: Literal["text", "chat"] = "text"
    text: str | None = None
    messages: list[ChatMessage] | None = None
    config: dict[str, Any] = Field(default_factory=dict)
