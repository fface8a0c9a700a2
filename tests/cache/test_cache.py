"""Cache Service against real NATS and Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bus.client import Client
from bus.context import new_context
from bus.errors import InvalidRequest, PayloadTooLarge, Unavailable
from bus.redis import create_redis
from bus.worker import Endpoint, Worker
from mesh.infra import RedisServer
from schemas.cache import CacheGetResponse
from workers.cache.service import build_worker
from workers.cache.store import CacheStore

pytestmark = pytest.mark.usefixtures("cache_worker")


def ctx(tenant: str = "acme", timeout: float = 5.0):
    return new_context(tenant, user="u", timeout=timeout)


async def cset(client: Client, tenant: str = "acme", **payload):
    return await client.request("cache.set.request", payload, ctx(tenant))


async def cget(client: Client, key: str, tenant: str = "acme", **kw) -> CacheGetResponse:
    return await client.request(
        "cache.get.request", {"key": key, **kw}, ctx(tenant), CacheGetResponse
    )


async def test_set_then_get_round_trips_any_value(client):
    value = {"list": [1, 2.5, None, True], "bytes": b"\x00\x01", "s": "é"}
    assert await cset(client, key="k1", value=value) == {"ok": True}
    assert await cget(client, "k1") == CacheGetResponse(hit=True, value=value)


async def test_miss_is_not_an_error(client):
    assert await cget(client, "never-set") == CacheGetResponse(hit=False, value=None)


async def test_ttl_expires_entries(client):
    await cset(client, key="short", value=1, ttl_seconds=1)
    assert (await cget(client, "short")).hit
    await asyncio.sleep(1.2)
    assert not (await cget(client, "short")).hit


async def test_namespaces_are_separate(client):
    await cset(client, namespace="a", key="k", value="in-a")
    await cset(client, namespace="b", key="k", value="in-b")
    assert (await cget(client, "k", namespace="a")).value == "in-a"
    assert (await cget(client, "k", namespace="b")).value == "in-b"


async def test_delete_counts_deleted_keys(client):
    await cset(client, key="d1", value=1)
    await cset(client, key="d2", value=2)
    out = await client.request("cache.delete.request", {"keys": ["d1", "d2", "nope"]}, ctx())
    assert out == {"deleted": 2}
    assert not (await cget(client, "d1")).hit


async def test_invalidate_namespace_drops_only_that_namespace(client):
    for i in range(5):
        await cset(client, namespace="inv", key=f"k{i}", value=i)
    await cset(client, namespace="keep", key="k0", value="kept")
    out = await client.request("cache.invalidate.request", {"namespace": "inv"}, ctx())
    assert out == {"invalidated": 5}
    assert not (await cget(client, "k3", namespace="inv")).hit
    assert (await cget(client, "k0", namespace="keep")).value == "kept"


async def test_invalidate_by_tag_across_namespaces(client):
    await cset(client, namespace="n1", key="a", value=1, tags=["doc-1"])
    await cset(client, namespace="n2", key="b", value=2, tags=["doc-1", "doc-2"])
    await cset(client, namespace="n2", key="c", value=3, tags=["doc-2"])
    out = await client.request("cache.invalidate.request", {"tags": ["doc-1"]}, ctx())
    assert out == {"invalidated": 2}
    assert (await cget(client, "c", namespace="n2")).hit


async def test_invalidate_by_tag_within_a_namespace(client):
    await cset(client, namespace="x1", key="a", value=1, tags=["t"])
    await cset(client, namespace="x2", key="a", value=2, tags=["t"])
    out = await client.request(
        "cache.invalidate.request", {"namespace": "x1", "tags": ["t"]}, ctx()
    )
    assert out == {"invalidated": 1}
    assert (await cget(client, "a", namespace="x2")).hit


@pytest.mark.parametrize(
    "payload",
    [
        {"key": "", "value": 1},
        {"key": "k", "value": 1, "namespace": "has:colon"},
        {"key": "k", "value": 1, "ttl_seconds": 0},
        {"key": "k", "value": 1, "tags": ["bad tag"]},
        {"value": 1},
        {"key": "k", "value": 1, "tenant": "other"},
    ],
)
async def test_invalid_set_requests(client, payload):
    with pytest.raises(InvalidRequest):
        await client.request("cache.set.request", payload, ctx())


async def test_invalidate_needs_a_target(client):
    with pytest.raises(InvalidRequest):
        await client.request("cache.invalidate.request", {}, ctx())


async def test_oversized_value_is_payload_too_large(client):
    with pytest.raises(PayloadTooLarge):
        await cset(client, key="big", value="x" * (1024 * 1024 + 10))


async def test_tenant_b_cannot_read_delete_or_invalidate_tenant_a(client):
    await cset(client, "tenant-a", namespace="shared", key="secret", value="a-only", tags=["t"])
    assert not (await cget(client, "secret", tenant="tenant-b", namespace="shared")).hit
    out = await client.request(
        "cache.delete.request", {"namespace": "shared", "keys": ["secret"]}, ctx("tenant-b")
    )
    assert out == {"deleted": 0}
    out = await client.request("cache.invalidate.request", {"namespace": "shared"}, ctx("tenant-b"))
    assert out == {"invalidated": 0}
    out = await client.request("cache.invalidate.request", {"tags": ["t"]}, ctx("tenant-b"))
    assert out == {"invalidated": 0}
    assert (await cget(client, "secret", tenant="tenant-a", namespace="shared")).value == "a-only"


async def test_redis_down_is_unavailable_quickly_and_recovers(env, tmp_path: Path):
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    redis = create_redis(redis_server.url, socket_timeout=1.0)
    # Its own service name, beside the shared cache worker.
    base = build_worker(CacheStore(redis))
    worker = Worker(
        "cachealt", [Endpoint(ep.op.served_as("cachealt"), ep.handler) for ep in base.endpoints]
    )
    client = Client(env.nc)
    try:
        async with worker.serve(env.nc):
            await client.request("cachealt.set.request", {"key": "k", "value": 1}, ctx())
            redis_server.stop()
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await client.request("cachealt.get.request", {"key": "k"}, ctx(timeout=10))
            assert time.monotonic() - started < 3
            redis_server.start()
            # A cache loses its data with Redis (no persistence) but serves again.
            out = await client.request("cachealt.get.request", {"key": "k"}, ctx(), idempotent=True)
            assert out == {"hit": False, "value": None}
            await client.request("cachealt.set.request", {"key": "k", "value": 2}, ctx())
            assert (await client.request("cachealt.get.request", {"key": "k"}, ctx()))["value"] == 2
    finally:
        await redis.aclose()
        redis_server.stop()
