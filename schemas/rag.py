"""RAG Service contracts used by other services (the RAG module extends these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class SearchRequest(BaseModel):
    collection_ids: list[str] = Field(min_length=1)
    query: str = Field(min_length=1)
    mode: Literal["hybrid", "vector", "keyword"] | None = None
    top_k: int | None = None
    filters: dict[str, Any] | None = None


class SearchResult(BaseModel):
    model_config = ConfigDict(extra="ignore")

    document_id: str
    source_id: str | None = None
    chunk_id: str | None = None
    score: float = 0.0
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    results: list[SearchResult] = Field(default_factory=list)
