"""RAG Service contracts: collections, documents, ``rag.ingest``, ``rag.search`` and
``rag.query`` (the names and shapes of ingest/search/query/create_collection are fixed)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.routes import Route

#: Default embedding alias of a new collection (the gateway's local MiniLM).
DEFAULT_EMBEDDING_MODEL = "local-embed"
#: Most documents one inline ``rag.ingest`` may carry, and the most text each may hold.
MAX_INGEST_DOCUMENTS = 100
MAX_INGEST_CHARS = 1_000_000
MAX_TOP_K = 100

Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Alias = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/@+-]{1,128}$")]
SourceId = Annotated[str, StringConstraints(min_length=1, max_length=512)]
SearchMode = Literal["hybrid", "vector", "keyword"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- collections


class CreateCollectionRequest(_Request):
    name: str = Field(min_length=1, max_length=128)
    embedding_model: Alias | None = Field(
        default=None, description=f"embedding alias; default {DEFAULT_EMBEDDING_MODEL!r}"
    )
    metadata: dict[str, Any] = Field(default_factory=dict)


class Collection(BaseModel):
    collection_id: str
    name: str
    embedding_model: str
    dimensions: int
    metadata: dict[str, Any] = Field(default_factory=dict)
    document_count: int = 0
    chunk_count: int = 0
    created_at: datetime | None = None


class GetCollectionRequest(_Request):
    collection_id: Id


class ListCollectionsRequest(_Request):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=256)


class ListCollectionsResponse(BaseModel):
    collections: list[Collection]
    next_cursor: str | None = None


class DeleteCollectionRequest(_Request):
    collection_id: Id


class DeleteCollectionResponse(BaseModel):
    deleted: bool
    documents: int


# ---------------------------------------------------------------- ingest (inline)


class IngestDocument(_Request):
    source_id: SourceId
    title: str | None = Field(default=None, max_length=1000)
    text: str = Field(min_length=1, max_length=MAX_INGEST_CHARS)
    metadata: dict[str, Any] = Field(default_factory=dict)


class IngestRequest(_Request):
    collection_id: Id
    documents: list[IngestDocument] = Field(min_length=1, max_length=MAX_INGEST_DOCUMENTS)


DocumentStatus = Literal["created", "updated", "unchanged"]


class IngestedDocument(BaseModel):
    document_id: str
    source_id: str
    status: DocumentStatus
    chunks: int = 0


class IngestResponse(BaseModel):
    documents: list[IngestedDocument]


# ---------------------------------------------------------------- search


class SearchRequest(_Request):
    collection_ids: list[Id] = Field(min_length=1, max_length=32)
    query: str = Field(min_length=1, max_length=10_000)
    mode: SearchMode = "hybrid"
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K)
    filters: dict[str, Any] | None = Field(
        default=None, description="JSON containment on document metadata (metadata @> filters)"
    )
    rrf_k: int = Field(default=60, ge=1, le=10_000, description="reciprocal rank fusion k")
    vector_weight: float = Field(default=1.0, ge=0, le=100)
    keyword_weight: float = Field(default=1.0, ge=0, le=100)
    candidates: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="rows each leg retrieves before fusion; default max(50, 4 * top_k)",
    )


class SearchResult(BaseModel):
    document_id: str
    source_id: str
    chunk_id: str
    score: float
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchResponse(BaseModel):
    results: list[SearchResult]


# ---------------------------------------------------------------- query


class QueryRequest(_Request):
    collection_ids: list[Id] = Field(min_length=1, max_length=32)
    question: str = Field(min_length=1, max_length=10_000)
    top_k: int = Field(default=5, ge=1, le=50)
    model: Alias | None = Field(default=None, description="chat alias; omitted = the default")
    mode: SearchMode = "hybrid"
    filters: dict[str, Any] | None = None
    max_context_tokens: int = Field(default=1500, ge=64, le=200_000)
    use_cache: bool = True


class Citation(BaseModel):
    document_id: str
    source_id: str
    chunk_id: str
    quote: str


class QueryResponse(BaseModel):
    answer: str
    citations: list[Citation]
    model: str | None = None
    cached: bool = False


# ---------------------------------------------------------------- documents


class Document(BaseModel):
    document_id: str
    collection_id: str
    source_id: str
    title: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    content_hash: str
    chunk_count: int
    job_id: str | None = None
    object_name: str | None = None
    created_at: datetime
    updated_at: datetime


class Chunk(BaseModel):
    chunk_id: str
    ord: int
    text: str
    section: str | None = None
    tokens: int


class DocumentDetail(Document):
    chunks: list[Chunk] = Field(default_factory=list)


class ListDocumentsRequest(_Request):
    collection_id: Id
    source_id: SourceId | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=256)


class ListDocumentsResponse(BaseModel):
    documents: list[Document]
    next_cursor: str | None = None


class GetDocumentRequest(_Request):
    document_id: Id
    include_chunks: bool = True


class UpdateDocumentRequest(_Request):
    document_id: Id
    title: str | None = Field(default=None, max_length=1000)
    metadata: dict[str, Any] | None = Field(
        default=None, description="replaces the document's metadata"
    )


class DeleteDocumentRequest(_Request):
    document_id: Id


class DeleteDocumentResponse(BaseModel):
    deleted: bool


class ReindexDocumentRequest(_Request):
    document_id: Id


class ReindexDocumentResponse(BaseModel):
    document_id: str
    chunks: int


_TAGS = ("rag",)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/api/v1/rag/collections",
        "rag.create_collection.request",
        CreateCollectionRequest,
        Collection,
        status_code=201,
        summary="Create a collection bound to an embedding model",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/rag/collections",
        "rag.list_collections.request",
        ListCollectionsRequest,
        ListCollectionsResponse,
        idempotent=True,
        summary="List collections",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/rag/collections/{collection_id}",
        "rag.get_collection.request",
        GetCollectionRequest,
        Collection,
        idempotent=True,
        summary="One collection with document and chunk counts",
        tags=_TAGS,
    ),
    Route(
        "DELETE",
        "/api/v1/rag/collections/{collection_id}",
        "rag.delete_collection.request",
        DeleteCollectionRequest,
        DeleteCollectionResponse,
        idempotent=True,
        summary="Delete a collection, its documents, chunks and uploaded files",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/rag/collections/{collection_id}/documents",
        "rag.ingest.request",
        IngestRequest,
        IngestResponse,
        idempotent=True,
        summary="Index small inline documents before answering",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/rag/collections/{collection_id}/documents",
        "rag.list_documents.request",
        ListDocumentsRequest,
        ListDocumentsResponse,
        idempotent=True,
        summary="List a collection's documents",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/rag/documents/{document_id}",
        "rag.get_document.request",
        GetDocumentRequest,
        DocumentDetail,
        idempotent=True,
        summary="One document with its chunks",
        tags=_TAGS,
    ),
    Route(
        "PATCH",
        "/api/v1/rag/documents/{document_id}",
        "rag.update_document.request",
        UpdateDocumentRequest,
        Document,
        idempotent=True,
        summary="Replace a document's title or metadata",
        tags=_TAGS,
    ),
    Route(
        "DELETE",
        "/api/v1/rag/documents/{document_id}",
        "rag.delete_document.request",
        DeleteDocumentRequest,
        DeleteDocumentResponse,
        idempotent=True,
        summary="Delete a document, its chunks and its uploaded file",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/rag/documents/{document_id}/reindex",
        "rag.reindex_document.request",
        ReindexDocumentRequest,
        ReindexDocumentResponse,
        idempotent=True,
        summary="Re-chunk and re-embed a document from its stored text",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/rag/search",
        "rag.search.request",
        SearchRequest,
        SearchResponse,
        idempotent=True,
        summary="Hybrid (RRF), vector or keyword search over collections",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/rag/query",
        "rag.query.request",
        QueryRequest,
        QueryResponse,
        idempotent=True,
        summary="Answer a question from collections, with citations",
        tags=_TAGS,
    ),
)
