"""``rag.*_document`` endpoints: list, get (with chunks), update, delete, reindex."""

from __future__ import annotations

from typing import Any

from bus.sql import tenant_of
from bus.worker import Endpoint
from schemas import rag
from schemas.context import Context
from schemas.rag import (
    Chunk,
    DeleteDocumentRequest,
    DeleteDocumentResponse,
    Document,
    DocumentDetail,
    GetDocumentRequest,
    IngestedDocument,
    ListDocumentsRequest,
    ListDocumentsResponse,
    ReindexDocumentRequest,
    ReindexDocumentResponse,
    UpdateDocumentRequest,
)
from workers.rag.effects import Effects
from workers.rag.indexing import Indexer
from workers.rag.store import RagStore, location_of, spans_of


def document_of(r: Any) -> Document:
    return Document(
        document_id=r["document_id"],
        collection_id=r["collection_id"],
        source_id=r["source_id"],
        title=r["title"],
        metadata=r["metadata"],
        content_hash=r["content_hash"],
        chunk_count=r["chunk_count"],
        job_id=r["job_id"],
        object_name=r["object_name"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


class Documents:
    def __init__(self, store: RagStore, effects: Effects, indexer: Indexer) -> None:
        self.store = store
        self.effects = effects
        self.indexer = indexer

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(rag.LIST_DOCUMENTS, self.list_documents),
            Endpoint(rag.GET_DOCUMENT, self.get_document),
            Endpoint(rag.UPDATE_DOCUMENT, self.update_document),
            Endpoint(rag.DELETE_DOCUMENT, self.delete_document),
            Endpoint(rag.REINDEX_DOCUMENT, self.reindex_document),
        ]

    async def list_documents(
        self, req: ListDocumentsRequest, ctx: Context
    ) -> ListDocumentsResponse:
        rows, cursor = await self.store.list_documents(
            tenant_of(ctx), req.collection_id, req.source_id, req.limit, req.cursor
        )
        return ListDocumentsResponse(documents=[document_of(r) for r in rows], next_cursor=cursor)

    async def get_document(self, req: GetDocumentRequest, ctx: Context) -> DocumentDetail:
        tenant = tenant_of(ctx)
        row = await self.store.document(tenant, req.document_id)
        chunks = await self.store.chunks_of(tenant, req.document_id) if req.include_chunks else []
        return DocumentDetail(
            **document_of(row).model_dump(),
            chunks=[
                Chunk(
                    chunk_id=c["chunk_id"],
                    ord=c["ord"],
                    text=c["text"],
                    section=c["section"],
                    tokens=c["token_count"],
                    location=location_of(c["location"]),
                )
                for c in chunks
            ],
        )

    async def update_document(self, req: UpdateDocumentRequest, ctx: Context) -> Document:
        tenant = tenant_of(ctx)
        row, retitle = await self.store.update_document(
            tenant, req.document_id, req.title, req.metadata
        )
        if retitle:
            await self._reindex(ctx, req.document_id, title=req.title)
            row = await self.store.document(tenant, req.document_id)
        await self.effects.invalidate(ctx, [row["collection_id"]])
        return document_of(row)

    async def delete_document(
        self, req: DeleteDocumentRequest, ctx: Context
    ) -> DeleteDocumentResponse:
        tenant = tenant_of(ctx)
        row = await self.store.delete_document(tenant, req.document_id)
        if row["object_name"]:
            await self.effects.drop_object(tenant, row["object_name"])
        await self.effects.invalidate(ctx, [row["collection_id"]])
        return DeleteDocumentResponse(deleted=True)

    async def reindex_document(
        self, req: ReindexDocumentRequest, ctx: Context
    ) -> ReindexDocumentResponse:
        result = await self._reindex(ctx, req.document_id)
        return ReindexDocumentResponse(document_id=result.document_id, chunks=result.chunks)

    async def _reindex(
        self, ctx: Context, document_id: str, *, title: str | None = None
    ) -> IngestedDocument:
        tenant = tenant_of(ctx)
        row = await self.store.document(tenant, document_id)
        collection = await self.store.collection(tenant, row["collection_id"])
        result = await self.indexer.index(
            ctx,
            collection,
            source_id=row["source_id"],
            title=title if title is not None else row["title"],
            text=row["body"],
            metadata=document_of(row).metadata,
            job_id=row["job_id"],
            force=True,
            spans=spans_of(row["spans"]),
        )
        await self.effects.invalidate(ctx, [collection.collection_id])
        return result
