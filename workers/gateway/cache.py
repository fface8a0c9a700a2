"""Exact-match response cache through the Cache Service (``cache.get``/``cache.set``).

The key is a SHA-256 of the tenant, the alias and the normalised request (everything that
shapes the answer; not the ``cache`` settings). The Cache Service scopes entries by the
caller's tenant already; the tenant is in the hash as well, so two tenants can never
share an entry even through a mis-scoped store. A cache that is down, slow or full is
skipped: the request goes to the model as if there were no cache.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import structlog

from bus.client import Client
from bus.context import now_ms
from bus.errors import MeshError
from schemas import cache
from schemas.cache import CacheGetRequest, CacheSetRequest
from schemas.context import Context
from schemas.gateway import GenerateRequest
from workers.gateway.background import Background

_log = structlog.get_logger(__name__)

#: Reserved (schemas.cache.RESERVED_PREFIX): users cannot plant answers here.
NAMESPACE = "_gateway"
KEY_VERSION = "v1"
#: Longest a cache lookup may take before the request goes on without it.
CACHE_TIMEOUT_S = 0.5
#: How long an answer stays cached unless the request or settings say otherwise.
DEFAULT_TTL_S = 3600


def cache_key(tenant: str, alias: str, req: GenerateRequest) -> str:
    shape = req.model_dump(exclude={"cache", "model"}, exclude_none=True, by_alias=True)
    text = json.dumps(
        {"v": KEY_VERSION, "tenant": tenant, "alias": alias, "request": shape},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def cache_policy(req: GenerateRequest) -> tuple[bool, bool]:
    """(read, write): the cache is used for temperature 0 or when the request opts in."""
    if req.cache is None and req.temperature != 0:
        return False, False
    control = req.cache
    return (not (control and control.no_cache), not (control and control.no_store))


def _short(ctx: Context, timeout: float) -> Context:
    deadline = now_ms() + int(timeout * 1000)
    if ctx.deadline is not None:
        deadline = min(deadline, ctx.deadline)
    return ctx.model_copy(update={"deadline": deadline})


class ResponseCache:
    def __init__(
        self, client: Client, background: Background, default_ttl: int = DEFAULT_TTL_S
    ) -> None:
        self.client = client
        self.background = background
        self.default_ttl = default_ttl
        self.hits = 0
        self.misses = 0
        self.errors = 0

    async def get(self, key: str, ctx: Context) -> dict[str, Any] | None:
        try:
            # A short deadline: retries, if any, stay inside it; a cache is not worth a wait.
            found = await self.client.call(
                cache.INTERNAL_GET,
                CacheGetRequest(namespace=NAMESPACE, key=key),
                _short(ctx, CACHE_TIMEOUT_S),
            )
        except MeshError as exc:
            self.errors += 1
            _log.warning("cache_get_failed", code=exc.code)
            return None
        if not found.hit or not isinstance(found.value, dict):
            self.misses += 1
            return None
        self.hits += 1
        return found.value

    def put(self, key: str, value: dict[str, Any], ttl: int | None, ctx: Context) -> None:
        """Store after answering, in the background."""
        request = CacheSetRequest(
            namespace=NAMESPACE, key=key, value=value, ttl_seconds=ttl or self.default_ttl
        )

        async def store() -> None:
            fresh = ctx.model_copy(update={"deadline": now_ms() + int(CACHE_TIMEOUT_S * 1000)})
            await self.client.call(cache.INTERNAL_SET, request, fresh)

        self.background.submit("cache_store", store)
