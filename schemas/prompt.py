"""Prompt Service contracts used by other services (the prompt module extends these)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.gateway import ChatMessage


class RenderRequest(BaseModel):
    name: str
    label: str | None = None
    version: int | None = None
    variables: dict[str, Any] = Field(default_factory=dict)


class RenderResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    version: int
    text: str | None = None
    messages: list[ChatMessage] | None = None
