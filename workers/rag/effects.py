"""Side effects every RAG resource shares: the answer cache and the object store.

Both are best effort: a cache or object-store outage costs memory or an orphaned file,
never a failed request.
"""

from __future__ import annotations

from typing import Any

import structlog
from nats.js import JetStreamContext

from bus.client import Client
from bus.context import child
from bus.errors import MeshError
from bus.uploads import delete_object
from schemas import cache
from schemas.context import Context
from schemas.rag import QueryResponse

_log = structlog.get_logger("workers.rag.service")

#: Reserved (schemas.cache.RESERVED_PREFIX): users cannot plant answers here.
QUERY_CACHE_NAMESPACE = "_rag.query"
QUERY_CACHE_TTL_S = 3600
CACHE_TIMEOUT_S = 1.0


def cache_tag(collection_id: str) -> str:
    return f"_rag.col.{collection_id}"  # reserved, like the namespace


class Effects:
    def __init__(self, client: Client, js: JetStreamContext) -> None:
        self.client = client
        self.js = js

    async def cache_get(self, ctx: Context, key: str) -> dict[str, Any] | None:
        try:
            out = await self.client.call(
                cache.INTERNAL_GET,
                {"namespace": QUERY_CACHE_NAMESPACE, "key": key},
                child(ctx, timeout=CACHE_TIMEOUT_S),
            )
        except MeshError as exc:
            _log.info("query_cache_unavailable", code=exc.code)
            return None
        return out.value if out.hit and isinstance(out.value, dict) else None

    async def cache_set(
        self, ctx: Context, key: str, response: QueryResponse, collection_ids: list[str]
    ) -> None:
        try:
            await self.client.call(
                cache.INTERNAL_SET,
                {
                    "namespace": QUERY_CACHE_NAMESPACE,
                    "key": key,
                    "value": response.model_dump(mode="json", exclude={"cached"}),
                    "ttl_seconds": QUERY_CACHE_TTL_S,
                    "tags": [cache_tag(c) for c in collection_ids],
                },
                child(ctx, timeout=CACHE_TIMEOUT_S),
            )
        except MeshError as exc:
            _log.info("query_cache_unavailable", code=exc.code)

    async def invalidate(self, ctx: Context, collection_ids: list[str]) -> None:
        """Drop cached answers of changed collections. The cache key also carries each
        collection's version, so a missed invalidation costs memory, never a stale answer."""
        try:
            await self.client.call(
                cache.INTERNAL_INVALIDATE,
                {"tags": [cache_tag(c) for c in collection_ids]},
                child(ctx, timeout=CACHE_TIMEOUT_S),
            )
        except MeshError as exc:
            _log.info("query_cache_invalidate_failed", code=exc.code)

    async def drop_object(self, tenant: str, name: str) -> None:
        try:
            await delete_object(self.js, name, tenant)
        except MeshError as exc:  # an orphaned file, never a failed request
            _log.warning("object_delete_failed", object=name, code=exc.code)
