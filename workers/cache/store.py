"""Redis layout of the cache, and invalidation that never scans the keyspace.

Entries live at ``t:{tenant}:{namespace}:{key}`` (docs/architecture.md, "State"). Beside
them, per tenant, sorted-set indexes list the entry keys of each namespace
(``ti:{tenant}:ns:{namespace}``) and each tag (``ti:{tenant}:tag:{tag}``), scored by
expiry time, so invalidating a namespace or a tag touches only its own entries. Expired
members are pruned whenever the index is written. An entry re-set with other tags stays
listed under its old ones, so a tag invalidation may drop it too: a cache errs on the
side of fresh.
"""

from __future__ import annotations

import time
from typing import Any, cast

import msgpack
import redis.asyncio as aioredis

from bus.errors import PayloadTooLarge

#: Largest value, packed, that one entry may hold.
MAX_VALUE_BYTES = 1024 * 1024
_BATCH = 500

# KEYS[1] entry, KEYS[2..] indexes; ARGV: value, ttl ms (0: none), now ms, expiry score.
_SET = """
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[3])
  redis.call('ZADD', KEYS[i], ARGV[4], KEYS[1])
end
return 1
"""


def entry_key(tenant: str, namespace: str, key: str) -> str:
    return f"t:{tenant}:{namespace}:{key}"


def ns_index(tenant: str, namespace: str) -> str:
    return f"ti:{tenant}:ns:{namespace}"


def tag_index(tenant: str, tag: str) -> str:
    return f"ti:{tenant}:tag:{tag}"


class CacheStore:
    def __init__(self, redis: aioredis.Redis, max_value_bytes: int = MAX_VALUE_BYTES) -> None:
        self.redis = redis
        self.max_value_bytes = max_value_bytes
        self._set = redis.register_script(_SET)

    async def set(
        self, tenant: str, namespace: str, key: str, value: Any, ttl: int | None, tags: list[str]
    ) -> None:
        packed = msgpack.packb(value, use_bin_type=True)
        if len(packed) > self.max_value_bytes:
            raise PayloadTooLarge(
                f"value of {len(packed)} bytes exceeds the {self.max_value_bytes}-byte limit"
            )
        now_ms = int(time.time() * 1000)
        ttl_ms = ttl * 1000 if ttl else 0
        score: float | str = now_ms + ttl_ms if ttl_ms else "+inf"
        keys = [entry_key(tenant, namespace, key), ns_index(tenant, namespace)]
        keys += [tag_index(tenant, t) for t in dict.fromkeys(tags)]
        await self._set(keys=keys, args=[packed, ttl_ms, now_ms, score])

    async def get(self, tenant: str, namespace: str, key: str) -> tuple[bool, Any]:
        raw = await self.redis.get(entry_key(tenant, namespace, key))
        if raw is None:
            return False, None
        return True, msgpack.unpackb(raw, raw=False)

    async def delete(self, tenant: str, namespace: str, keys: list[str]) -> int:
        full = [entry_key(tenant, namespace, k) for k in dict.fromkeys(keys)]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.unlink(*full)
            pipe.zrem(ns_index(tenant, namespace), *full)
            deleted, _ = await pipe.execute()
        return int(deleted)

    async def invalidate(self, tenant: str, namespace: str | None, tags: list[str] | None) -> int:
        if not tags:
            assert namespace is not None
            return await self._drain_index(ns_index(tenant, namespace))
        prefix = entry_key(tenant, namespace, "") if namespace else None
        total = 0
        for tag in dict.fromkeys(tags):
            if prefix is None:
                total += await self._drain_index(tag_index(tenant, tag))
            else:
                total += await self._drop_matching(tag_index(tenant, tag), prefix)
        return total

    async def _drain_index(self, index: str) -> int:
        """Pop the index in batches and unlink what it lists; O(entries in the index)."""
        total = 0
        while True:
            # redis-py types every reply shape a command may have; this one's is fixed.
            popped = cast(list[tuple[bytes, float]], await self.redis.zpopmin(index, _BATCH))
            if not popped:
                return total
            total += int(await self.redis.unlink(*[member for member, _ in popped]))

    async def _drop_matching(self, index: str, prefix: str) -> int:
        total = 0
        start = 0
        while True:
            members = cast(list[bytes], await self.redis.zrange(index, start, start + _BATCH - 1))
            if not members:
                return total
            hits = [m for m in members if m.decode().startswith(prefix)]
            if hits:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.unlink(*hits)
                    pipe.zrem(index, *hits)
                    deleted, _ = await pipe.execute()
                total += int(deleted)
            start += len(members) - len(hits)
