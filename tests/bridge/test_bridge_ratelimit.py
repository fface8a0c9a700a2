"""Rate limits: token buckets in the shared Redis, exact across bridge instances."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest

from gateway_bridge.app import create_app
from mesh.infra import RedisServer
from tests.bridge_support import auth, bridge_settings, hs_token, http, serving

pytestmark = pytest.mark.usefixtures("cache_worker")

GET = "/api/v1/cache/get"
BODY = {"key": "k"}


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
async def two_bridges(settings, cache_worker):
    """Two app instances, each with its own NATS and Redis connections, one Redis."""
    s = bridge_settings(
        settings,
        rate_limit_tenant="10/3600",
        rate_limit_user="1000/3600",
        rate_limit_overrides={"vip": {"tenant": "25/3600"}},
    )
    async with serving(create_app(s)) as a, serving(create_app(s)) as b:
        yield a, b


async def _burst(urls: list[str], token: str, n: int) -> list:
    async with http(urls[0]) as ca, http(urls[-1]) as cb:
        clients = [ca, cb]
        return await asyncio.gather(
            *(clients[i % 2].post(GET, json=BODY, headers=auth(token)) for i in range(n))
        )


async def test_two_bridges_sharing_redis_admit_exactly_the_quota(two_bridges):
    busy, quiet = tenant(), tenant()
    responses = await _burst(list(two_bridges), hs_token(tenant=busy), 30)
    assert Counter(r.status_code for r in responses) == {200: 10, 429: 20}
    others = await _burst(list(two_bridges), hs_token(tenant=quiet), 4)
    assert [r.status_code for r in others] == [200, 200, 200, 200]


async def test_429_is_problem_json_with_retry_after_and_ratelimit_headers(two_bridges):
    token = hs_token(tenant=tenant())
    responses = await _burst(list(two_bridges), token, 11)
    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) == 1
    r = refused[0]
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["ratelimit-limit"] == "10"
    assert r.headers["ratelimit-remaining"] == "0"
    assert r.headers["ratelimit-policy"] == "10;w=3600"
    assert int(r.headers["ratelimit-reset"]) > 0


async def test_admitted_responses_count_down_ratelimit_remaining(two_bridges):
    token = hs_token(tenant=tenant())
    async with http(two_bridges[0]) as c:
        remaining = [
            int((await c.post(GET, json=BODY, headers=auth(token))).headers["ratelimit-remaining"])
            for _ in range(3)
        ]
    assert remaining == [9, 8, 7]


async def test_per_tenant_override_raises_that_tenants_quota(two_bridges):
    responses = await _burst(list(two_bridges), hs_token(tenant="vip", user=tenant()), 30)
    assert Counter(r.status_code for r in responses)[200] == 25


async def test_user_quota_limits_one_user_not_the_tenants_other_users(settings):
    s = bridge_settings(settings, rate_limit_tenant="1000/3600", rate_limit_user="3/3600")
    t = tenant()
    async with serving(create_app(s)) as url, http(url) as c:
        alice = [
            (
                await c.post(GET, json=BODY, headers=auth(hs_token(tenant=t, user="alice")))
            ).status_code
            for _ in range(5)
        ]
        bob = await c.post(GET, json=BODY, headers=auth(hs_token(tenant=t, user="bob")))
    assert alice == [200, 200, 200, 429, 429]
    assert bob.status_code == 200


async def test_refused_requests_do_not_spend_the_other_bucket(settings):
    # A user refused by their own bucket must not drain the tenant's bucket.
    s = bridge_settings(settings, rate_limit_tenant="5/3600", rate_limit_user="2/3600")
    t = tenant()
    async with serving(create_app(s)) as url, http(url) as c:
        for _ in range(6):
            await c.post(GET, json=BODY, headers=auth(hs_token(tenant=t, user="greedy")))
        others = [
            (
                await c.post(GET, json=BODY, headers=auth(hs_token(tenant=t, user=f"u{i}")))
            ).status_code
            for i in range(4)
        ]
    assert others == [200, 200, 200, 429]  # 5 tenant tokens: 2 for greedy, 3 for the rest


async def test_redis_down_fails_open_onto_in_process_buckets(settings, tmp_path):
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    s = bridge_settings(
        settings, redis_url=redis.url, rate_limit_tenant="4/3600", rate_limit_user="100/3600"
    )
    app = create_app(s)
    t = tenant()
    try:
        async with serving(app) as url, http(url) as c:
            assert (
                await c.post(GET, json=BODY, headers=auth(hs_token(tenant=t)))
            ).status_code == 200
            redis.stop()
            statuses = [
                (await c.post(GET, json=BODY, headers=auth(hs_token(tenant=t)))).status_code
                for _ in range(6)
            ]
            ready = await c.get("/readyz")
            metrics = (await c.get("/metrics")).text
    finally:
        redis.stop()
    # Fail open: requests still pass while Redis is away, but the local bucket still limits.
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert ready.status_code == 200 and "rate limits are per process" in ready.json()["redis"]
    assert "bridge_ratelimit_fallback_total 6.0" in metrics
