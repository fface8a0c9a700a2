"""Cache Service endpoints: ``cache.{set,get,delete,invalidate}.request``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bus.codec import Codec
from bus.errors import Forbidden, InvalidRequest
from bus.redis import create_redis
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import cache
from schemas.cache import (
    RESERVED_PREFIX,
    CacheDeleteRequest,
    CacheDeleteResponse,
    CacheGetRequest,
    CacheGetResponse,
    CacheInvalidateRequest,
    CacheInvalidateResponse,
    CacheSetRequest,
    CacheSetResponse,
)
from schemas.context import Context
from workers.cache.store import CacheStore

VERSION = "0.1.0"


def _public(namespace: str | None, tags: list[str] | None = None) -> None:
    """Users' requests may not touch the services' reserved namespaces and tags."""
    names = [n for n in (namespace, *(tags or ())) if n]
    reserved = [n for n in names if n.startswith(RESERVED_PREFIX)]
    if reserved:
        raise Forbidden(
            f"{reserved[0]!r} is reserved for the mesh's services "
            f"(names starting with {RESERVED_PREFIX!r})"
        )


def _internal(namespace: str | None, tags: list[str] | None = None) -> None:
    names = [n for n in (namespace, *(tags or ())) if n]
    if any(not n.startswith(RESERVED_PREFIX) for n in names):
        raise InvalidRequest(
            f"internal cache operations take reserved names only ({RESERVED_PREFIX!r}...)"
        )


class CacheHandlers:
    def __init__(self, store: CacheStore) -> None:
        self.store = store

    # -- the services' own entries (no HTTP route; the bridge may not call these) ----

    async def internal_set(self, req: CacheSetRequest, ctx: Context) -> CacheSetResponse:
        _internal(req.namespace, req.tags)
        return await self._set(req, ctx)

    async def internal_get(self, req: CacheGetRequest, ctx: Context) -> CacheGetResponse:
        _internal(req.namespace)
        return await self._get(req, ctx)

    async def internal_invalidate(
        self, req: CacheInvalidateRequest, ctx: Context
    ) -> CacheInvalidateResponse:
        _internal(req.namespace, req.tags)
        return await self._invalidate(req, ctx)

    # -- users' entries ------------------------------------------------------------------

    async def set(self, req: CacheSetRequest, ctx: Context) -> CacheSetResponse:
        _public(req.namespace, req.tags)
        return await self._set(req, ctx)

    async def _set(self, req: CacheSetRequest, ctx: Context) -> CacheSetResponse:
        assert ctx.tenant  # the runtime rejects tenant-less requests
        await self.store.set(
            ctx.tenant, req.namespace, req.key, req.value, req.ttl_seconds, req.tags
        )
        return CacheSetResponse(ok=True)

    async def get(self, req: CacheGetRequest, ctx: Context) -> CacheGetResponse:
        _public(req.namespace)
        return await self._get(req, ctx)

    async def _get(self, req: CacheGetRequest, ctx: Context) -> CacheGetResponse:
        assert ctx.tenant
        hit, value = await self.store.get(ctx.tenant, req.namespace, req.key)
        return CacheGetResponse(hit=hit, value=value)

    async def delete(self, req: CacheDeleteRequest, ctx: Context) -> CacheDeleteResponse:
        _public(req.namespace)
        assert ctx.tenant
        return CacheDeleteResponse(
            deleted=await self.store.delete(ctx.tenant, req.namespace, req.keys)
        )

    async def invalidate(
        self, req: CacheInvalidateRequest, ctx: Context
    ) -> CacheInvalidateResponse:
        _public(req.namespace, req.tags)
        return await self._invalidate(req, ctx)

    async def _invalidate(
        self, req: CacheInvalidateRequest, ctx: Context
    ) -> CacheInvalidateResponse:
        assert ctx.tenant
        n = await self.store.invalidate(ctx.tenant, req.namespace, req.tags)
        return CacheInvalidateResponse(invalidated=n)


def build_worker(
    store: CacheStore, codec: Codec | None = None, max_concurrency: int = 64
) -> Worker:
    h = CacheHandlers(store)
    return Worker(
        "cache",
        endpoints=[
            Endpoint(cache.SET, h.set),
            Endpoint(cache.GET, h.get),
            Endpoint(cache.DELETE, h.delete),
            Endpoint(cache.INVALIDATE, h.invalidate),
            Endpoint(cache.INTERNAL_SET, h.internal_set),
            Endpoint(cache.INTERNAL_GET, h.internal_get),
            Endpoint(cache.INTERNAL_INVALIDATE, h.internal_invalidate),
        ],
        version=VERSION,
        description="Tenant-scoped cache on Redis",
        codec=codec or Codec(),
        max_concurrency=max_concurrency,
    )


@asynccontextmanager
async def lifespan(env: WorkerEnv) -> AsyncIterator[Worker]:
    if not env.settings.redis_url:
        raise RuntimeError("REDIS_URL is not set")
    redis = create_redis(env.settings.redis_url)
    try:
        yield build_worker(
            CacheStore(redis), Codec(env.settings.codec_type), env.settings.max_concurrency
        )
    finally:
        await redis.aclose()
