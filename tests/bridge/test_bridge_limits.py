"""Body limits, the problem+json error contract and unavailable workers."""

from __future__ import annotations

import asyncio
import time

import pytest

from bus.errors import RateLimited
from bus.worker import Endpoint, Worker
from gateway_bridge.app import create_app
from tests.bridge_support import ALL_ROUTES, auth, bridge_settings, hs_token, http, serving
from tests.support import MISSING, Empty, Probe, probe_worker

pytestmark = pytest.mark.usefixtures("cache_worker")

LIMIT = 4096
SET = "/api/v1/cache/set"


@pytest.fixture(scope="module")
async def bridge(settings, cache_worker):
    s = bridge_settings(settings, bridge_max_body_bytes=LIMIT)
    async with serving(create_app(s, ALL_ROUTES)) as url:
        yield url


@pytest.fixture
async def cache_traffic(env):
    """Every message published on cache.> while the test runs (a plain, non-queue sub)."""
    seen: list[bytes] = []

    async def record(msg):
        seen.append(msg.data)

    sub = await env.nc.subscribe("cache.>", cb=record)
    await env.nc.flush()
    yield seen
    await sub.unsubscribe()


async def _settle(env) -> None:
    await env.nc.flush()
    await asyncio.sleep(0.2)


async def test_oversized_body_with_content_length_is_413_and_never_reaches_nats(
    bridge, env, cache_traffic
):
    big = {"key": "big", "value": "x" * (LIMIT * 4)}
    async with http(bridge) as c:
        r = await c.post(SET, json=big, headers=auth(hs_token()))
        await _settle(env)
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "payload_too_large"
        assert cache_traffic == []
        # The subscription does see what the bridge forwards.
        ok = await c.post(SET, json={"key": "small", "value": 1}, headers=auth(hs_token()))
        await _settle(env)
    assert ok.status_code == 200
    assert len(cache_traffic) == 1


async def test_oversized_chunked_body_is_413_and_never_reaches_nats(bridge, env, cache_traffic):
    async def chunks():
        yield b'{"key": "big", "value": "'
        for _ in range(16):
            yield b"x" * 1024
        yield b'"}'

    async with http(bridge) as c:
        r = await c.post(
            SET,
            content=chunks(),
            headers={**auth(hs_token()), "Content-Type": "application/json"},
        )
    await _settle(env)
    assert "content-length" not in r.request.headers  # streamed: the bridge had to count
    assert r.status_code == 413
    assert cache_traffic == []


async def test_body_under_the_limit_passes(bridge):
    async with http(bridge) as c:
        r = await c.post(
            SET, json={"key": "fits", "value": "x" * (LIMIT // 2)}, headers=auth(hs_token())
        )
    assert r.status_code == 200


async def test_stopped_worker_answers_503_problem_not_a_hang(bridge, env):
    token = auth(hs_token())
    async with http(bridge) as c:
        async with probe_worker(Probe()).serve(env.nc):
            live = await c.post("/api/v1/probe/echo", json={"text": "x"}, headers=token)
        started = time.monotonic()
        stopped = await c.post("/api/v1/probe/echo", json={"text": "x"}, headers=token)
    assert live.status_code == 200
    assert stopped.status_code == 503
    assert stopped.headers["content-type"] == "application/problem+json"
    assert stopped.json()["code"] == "unavailable"
    assert time.monotonic() - started < 5  # no responders is immediate, not the 30 s deadline


@pytest.fixture
async def probe(env):
    async with probe_worker(Probe()).serve(env.nc):
        yield


async def test_worker_error_maps_to_its_status(bridge, probe):
    async with http(bridge) as c:
        r = await c.post("/api/v1/probe/missing", json={}, headers=auth(hs_token()))
    assert r.status_code == 404
    body = r.json()
    assert body["code"] == "not_found" and body["detail"] == "no such thing"
    assert body["type"] == "urn:motadata:mesh:error:not_found"
    assert body["instance"] == "/api/v1/probe/missing"
    assert body["correlation_id"] == r.headers["x-correlation-id"]


async def test_worker_crash_is_500_without_internals(bridge, probe):
    async with http(bridge) as c:
        r = await c.post("/api/v1/probe/crash", json={}, headers=auth(hs_token()))
    assert r.status_code == 500
    assert r.json()["code"] == "internal"
    assert "passwd" not in r.text


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b'"text"', b'{"key": NaN}', b'{"key": "k", "value": Infinity}'],
    ids=["syntax", "array", "string", "nan", "infinity"],
)
async def test_body_that_is_not_a_json_object_is_400(bridge, content):
    async with http(bridge) as c:
        r = await c.post(
            SET,
            content=content,
            headers={**auth(hs_token()), "Content-Type": "application/json"},
        )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_request"


async def test_schema_violation_is_400_with_field_details(bridge):
    async with http(bridge) as c:
        r = await c.post(SET, json={"key": "k", "ttl_seconds": -5}, headers=auth(hs_token()))
    assert r.status_code == 400
    fields = {tuple(e["loc"]) for e in r.json()["details"]}
    assert fields == {("value",), ("ttl_seconds",)}


@pytest.mark.parametrize(
    "content",
    [b'{"key": "k", "value": "\\ud800"}', b'{"key": "k", "value": 123456789012345678901234567890}'],
    ids=["lone_surrogate", "int_beyond_64_bits"],
)
async def test_values_msgpack_cannot_carry_are_400(bridge, content):
    async with http(bridge) as c:
        r = await c.post(
            SET, content=content, headers={**auth(hs_token()), "Content-Type": "application/json"}
        )
    assert r.status_code == 400


async def test_unknown_route_is_404_problem(bridge):
    async with http(bridge) as c:
        r = await c.get("/api/v1/nothing/here")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "not_found"


async def test_wrong_method_is_405_problem_with_allow(bridge):
    async with http(bridge) as c:
        r = await c.delete("/api/v1/cache/get")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 405


async def test_worker_rate_limited_error_gets_retry_after(bridge, env):
    async def busy(req: Empty, ctx) -> Empty:
        raise RateLimited("provider quota", {"retry_after": 7})

    worker = Worker("probe", endpoints=[Endpoint(MISSING, busy)])
    async with worker.serve(env.nc), http(bridge) as c:
        r = await c.post("/api/v1/probe/missing", json={}, headers=auth(hs_token()))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert r.json()["details"] == {"retry_after": 7}
