"""``rag.*_collection`` endpoints: create (probing the model's dimension), get, list, delete."""

from __future__ import annotations

from bus.errors import UpstreamError
from bus.sql import tenant_of
from bus.worker import Endpoint
from schemas import rag
from schemas.context import Context
from schemas.rag import (
    DEFAULT_EMBEDDING_MODEL,
    Collection,
    CreateCollectionRequest,
    DeleteCollectionRequest,
    DeleteCollectionResponse,
    GetCollectionRequest,
    ListCollectionsRequest,
    ListCollectionsResponse,
)
from workers.rag.effects import Effects
from workers.rag.llm import Models
from workers.rag.store import CollectionRow, RagStore


def collection_of(row: CollectionRow) -> Collection:
    return Collection(
        collection_id=row.collection_id,
        name=row.name,
        embedding_model=row.embedding_model,
        dimensions=row.dimensions,
        metadata=row.metadata,
        document_count=row.document_count,
        chunk_count=row.chunk_count,
        created_at=row.created_at,
    )


class Collections:
    def __init__(self, store: RagStore, models: Models, effects: Effects) -> None:
        self.store = store
        self.models = models
        self.effects = effects

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(rag.CREATE_COLLECTION, self.create_collection),
            Endpoint(rag.GET_COLLECTION, self.get_collection),
            Endpoint(rag.LIST_COLLECTIONS, self.list_collections),
            Endpoint(rag.DELETE_COLLECTION, self.delete_collection),
        ]

    async def create_collection(self, req: CreateCollectionRequest, ctx: Context) -> Collection:
        model = req.embedding_model or DEFAULT_EMBEDDING_MODEL
        # The dimension comes from the model itself: one probe embedding.
        probe = await self.models.embed(ctx, model, ["dimension probe"])
        if not probe or not probe[0]:
            raise UpstreamError(f"embedding model {model!r} returned an empty vector")
        row = await self.store.create_collection(
            tenant_of(ctx), req.name, model, len(probe[0]), req.metadata
        )
        return collection_of(row)

    async def get_collection(self, req: GetCollectionRequest, ctx: Context) -> Collection:
        return collection_of(
            await self.store.collection(tenant_of(ctx), req.collection_id, counts=True)
        )

    async def list_collections(
        self, req: ListCollectionsRequest, ctx: Context
    ) -> ListCollectionsResponse:
        rows, cursor = await self.store.list_collections(tenant_of(ctx), req.limit, req.cursor)
        return ListCollectionsResponse(
            collections=[collection_of(r) for r in rows], next_cursor=cursor
        )

    async def delete_collection(
        self, req: DeleteCollectionRequest, ctx: Context
    ) -> DeleteCollectionResponse:
        tenant = tenant_of(ctx)
        count, objects = await self.store.delete_collection(tenant, req.collection_id)
        for name in objects:
            await self.effects.drop_object(tenant, name)
        await self.effects.invalidate(ctx, [req.collection_id])
        return DeleteCollectionResponse(deleted=True, documents=count)
