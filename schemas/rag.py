"""RAG Service contracts: collections, documents, ``rag.ingest``, ``rag.search`` and
``rag.query`` (the names and shapes of ingest/search/query/create_collection are fixed)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.locations import Location
from schemas.operations import Operation
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
    location: Location | None = Field(
        default=None, description="where in the file: page, sheet and rows, slide, time"
    )
    collection_id: str | None = Field(default=None, description="the chunk's collection")
    title: str | None = Field(default=None, description="its document's title")


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
    location: Location | None = Field(
        default=None, description="where in the file: page, sheet and rows, slide, time"
    )


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
    location: Location | None = None


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


QUERY = Operation(
    "rag",
    "query",
    QueryRequest,
    QueryResponse,
    idempotent=False,
    description="answer with citations",
)
CREATE_COLLECTION = Operation(
    "rag",
    "create_collection",
    CreateCollectionRequest,
    Collection,
    idempotent=False,
    description="create a collection bound to an embedding model",
)
GET_COLLECTION = Operation(
    "rag",
    "get_collection",
    GetCollectionRequest,
    Collection,
    idempotent=True,
    description="One collection with document and chunk counts",
)
LIST_COLLECTIONS = Operation(
    "rag",
    "list_collections",
    ListCollectionsRequest,
    ListCollectionsResponse,
    idempotent=True,
    description="List collections",
)
DELETE_COLLECTION = Operation(
    "rag",
    "delete_collection",
    DeleteCollectionRequest,
    DeleteCollectionResponse,
    idempotent=True,
    description="Delete a collection, its documents, chunks and uploaded files",
)
INGEST = Operation(
    "rag",
    "ingest",
    IngestRequest,
    IngestResponse,
    idempotent=True,
    description="index inline documents",
)
SEARCH = Operation(
    "rag",
    "search",
    SearchRequest,
    SearchResponse,
    idempotent=True,
    description="hybrid/vector/keyword",
)
LIST_DOCUMENTS = Operation(
    "rag",
    "list_documents",
    ListDocumentsRequest,
    ListDocumentsResponse,
    idempotent=True,
    description="List a collection's documents",
)
GET_DOCUMENT = Operation(
    "rag",
    "get_document",
    GetDocumentRequest,
    DocumentDetail,
    idempotent=True,
    description="One document with its chunks",
)
UPDATE_DOCUMENT = Operation(
    "rag",
    "update_document",
    UpdateDocumentRequest,
    Document,
    idempotent=True,
    description="Replace a document's title or metadata",
)
DELETE_DOCUMENT = Operation(
    "rag",
    "delete_document",
    DeleteDocumentRequest,
    DeleteDocumentResponse,
    idempotent=True,
    description="Delete a document, its chunks and its uploaded file",
)
REINDEX_DOCUMENT = Operation(
    "rag",
    "reindex_document",
    ReindexDocumentRequest,
    ReindexDocumentResponse,
    idempotent=True,
    description="Re-chunk and re-embed a document from its stored text",
)
OPERATIONS = (
    QUERY,
    CREATE_COLLECTION,
    GET_COLLECTION,
    LIST_COLLECTIONS,
    DELETE_COLLECTION,
    INGEST,
    SEARCH,
    LIST_DOCUMENTS,
    GET_DOCUMENT,
    UPDATE_DOCUMENT,
    DELETE_DOCUMENT,
    REINDEX_DOCUMENT,
)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/api/v1/rag/collections",
        CREATE_COLLECTION,
        status_code=201,
        summary="Create a collection bound to an embedding model",
        tags=_TAGS,
    ),
    Route(
        "GET", "/api/v1/rag/collections", LIST_COLLECTIONS, summary="List collections", tags=_TAGS
    ),
    Route(
        "GET",
        "/api/v1/rag/collections/{collection_id}",
        GET_COLLECTION,
        summary="One collection with document and chunk counts",
        tags=_TAGS,
    ),
    Route(
        "DELETE",
        "/api/v1/rag/collections/{collection_id}",
        DELETE_COLLECTION,
        summary="Delete a collection, its documents, chunks and uploaded files",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/rag/collections/{collection_id}/documents",
        INGEST,
        summary="Index small inline documents before answering",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/rag/collections/{collection_id}/documents",
        LIST_DOCUMENTS,
        summary="List a collection's documents",
        tags=_TAGS,
    ),
    Route(
        "GET",
        "/api/v1/rag/documents/{document_id}",
        GET_DOCUMENT,
        summary="One document with its chunks",
        tags=_TAGS,
    ),
    Route(
        "PATCH",
        "/api/v1/rag/documents/{document_id}",
        UPDATE_DOCUMENT,
        summary="Replace a document's title or metadata",
        tags=_TAGS,
    ),
    Route(
        "DELETE",
        "/api/v1/rag/documents/{document_id}",
        DELETE_DOCUMENT,
        summary="Delete a document, its chunks and its uploaded file",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/rag/documents/{document_id}/reindex",
        REINDEX_DOCUMENT,
        summary="Re-chunk and re-embed a document from its stored text",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/rag/search",
        SEARCH,
        summary="Hybrid (RRF), vector or keyword search over collections",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/rag/query",
        QUERY,
        summary="Answer a question from collections, with citations",
        tags=_TAGS,
    ),
)
