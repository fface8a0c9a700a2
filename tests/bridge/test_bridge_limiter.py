"""The rate limiter's parts: quotas, the in-process bucket, and the script against real Redis."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway_bridge.ratelimit import (
    TAKE_SCRIPT,
    Decision,
    LocalBuckets,
    Quota,
    RateLimiter,
    _Bucket,
)
from gateway_bridge.redis_script import RedisScript
from gateway_bridge.settings import BridgeSettings
from mesh.infra import RedisServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("text", ["10", "0/60", "-1/60", "10/0", "10/-5", "ten/60", "10/inf"])
def test_malformed_quota_is_refused_when_settings_are_read(text):
    with pytest.raises(ValueError, match="requests>/<seconds"):
        BridgeSettings(rate_limit_tenant=text)


def test_quota_refill_rate_and_policy():
    q = Quota.parse("600/60")
    assert (q.limit, q.window, q.per_second, q.policy) == (600, 60.0, 10.0, "600;w=60")


def test_local_bucket_refills_with_time():
    clock = FakeClock()
    local = LocalBuckets(clock=clock)
    bucket = [_Bucket("k", Quota(2, 10))]
    assert [local.take(bucket)[0] for _ in range(3)] == [True, True, False]
    clock.now += 5  # half the window: one token back
    assert [local.take(bucket)[0] for _ in range(2)] == [True, False]


def test_local_buckets_forget_the_least_recently_used():
    local = LocalBuckets(max_buckets=3)
    for i in range(5):
        local.take([_Bucket(f"k{i}", Quota(1, 60))])
    assert list(local._state) == ["k2", "k3", "k4"]


def test_denied_decision_headers_carry_retry_after():
    d = Decision(allowed=False, quota=Quota(10, 60), remaining=0, reset=59.2, retry_after=5.5)
    assert d.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "60",
        "RateLimit-Policy": "10;w=60",
        "Retry-After": "6",
    }


async def test_script_survives_a_script_flush(settings):
    """After Redis loses its script cache (restart, SCRIPT FLUSH) the limiter reloads it."""
    assert settings.redis_url
    script = RedisScript(settings.redis_url, TAKE_SCRIPT, timeout=2)
    limiter = RateLimiter(script, Quota(3, 3600), Quota(100, 3600))
    tenant = f"flush-{uuid.uuid4().hex[:8]}"
    try:
        assert (await limiter.take(tenant, "u")).remaining == 2
        admin = aioredis.Redis.from_url(settings.redis_url)
        await admin.script_flush()
        await admin.aclose()
        decisions = [await limiter.take(tenant, "u") for _ in range(3)]
    finally:
        await script.close()
    assert [d.allowed for d in decisions] == [True, True, False]
    assert limiter._redis_down_until == 0.0  # never fell back to the local bucket


async def test_script_answers_many_concurrent_callers_in_order(settings):
    assert settings.redis_url
    script = RedisScript(settings.redis_url, TAKE_SCRIPT, timeout=5)
    limiter = RateLimiter(script, Quota(50, 3600), Quota(1000, 3600))
    tenant = f"many-{uuid.uuid4().hex[:8]}"
    try:
        decisions = await asyncio.gather(*(limiter.take(tenant, "u") for _ in range(80)))
    finally:
        await script.close()
    assert sum(d.allowed for d in decisions) == 50
    # Pipelined replies are matched to their callers: each admitted one saw its own count.
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(50))


async def test_a_redis_that_stops_answering_times_out_and_fails_open(tmp_path):
    """A frozen Redis (SIGSTOP: connected, silent) fails the pending call after the timeout;
    the limiter decides locally, and uses Redis again once it answers."""
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    assert redis.proc is not None
    script = RedisScript(redis.url, TAKE_SCRIPT, timeout=0.2)
    clock = FakeClock()
    limiter = RateLimiter(script, Quota(10, 3600), Quota(10, 3600), clock=clock)
    try:
        assert (await limiter.take("frozen", "u")).remaining == 9
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            async with asyncio.timeout(5):
                local = await asyncio.gather(*(limiter.take("frozen", "u") for _ in range(3)))
            waited = time.monotonic() - started
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        assert limiter._redis_down_until > 0  # fell back to the in-process bucket
        clock.now += 60  # past REDIS_RETRY_S: the next call tries Redis again
        again = await limiter.take("frozen", "u")
    finally:
        await script.close()
        redis.stop()
    assert 0.15 < waited < 3
    assert [d.remaining for d in local] == [9, 8, 7]  # local buckets start full
    # Redis's count again (the timed-out calls may have run once Redis woke up).
    assert limiter._redis_down_until == 0.0 and again.remaining in (5, 8)


async def test_one_turns_requests_are_decided_one_by_one_in_one_call(settings):
    """Requests of one tenant arriving together share a script call, with the semantics of
    separate calls: a refused user takes nothing from the tenant's bucket."""
    assert settings.redis_url
    script = RedisScript(settings.redis_url, TAKE_SCRIPT, timeout=5)
    calls = 0

    async def counted(keys: list[str], args: list[str]) -> Any:
        nonlocal calls
        calls += 1
        return await script(keys, args)

    limiter = RateLimiter(counted, Quota(10, 3600), Quota(2, 3600))  # type: ignore[arg-type]
    tenant = f"batch-{uuid.uuid4().hex[:8]}"
    other = f"other-{uuid.uuid4().hex[:8]}"
    try:
        decisions = await asyncio.gather(
            *(limiter.take(tenant, user) for user in ["a"] * 5 + ["b"] * 3),
            limiter.take(other, "a"),  # another tenant in the same turn: its own call
        )
        together = calls
        after = await limiter.take(tenant, "c")
    finally:
        await script.close()
    assert together == 2  # one call per tenant for the nine requests
    a, b, elsewhere = decisions[:5], decisions[5:8], decisions[8]
    assert [d.allowed for d in a] == [True, True, False, False, False]
    assert [d.allowed for d in b] == [True, True, False]
    assert elsewhere.allowed and elsewhere.remaining == 1  # its user's bucket binds
    # 4 admitted, so the tenant's bucket had 6 left; user c's request leaves 5 there.
    assert after.allowed and after.remaining == 1  # user c's bucket (2 - 1) binds
    assert await _tenant_tokens(settings.redis_url, tenant) == 5


async def _tenant_tokens(url: str, tenant: str) -> int:
    admin = aioredis.Redis.from_url(url)
    try:
        return int(float(await admin.hget(f"rl:{{{tenant}}}:t", "k")))
    finally:
        await admin.aclose()
