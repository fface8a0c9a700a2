"""The bridge's trust boundaries (issue 10, items 6 and 11): metrics are not public, and
users cannot reach the services' cache entries."""

from __future__ import annotations

import httpx
import pytest

from gateway_bridge.app import create_app
from tests.bridge_support import auth, bridge_settings, hs_token, http, serving

pytestmark = pytest.mark.usefixtures("cache_worker")


@pytest.fixture(scope="module")
async def bridge(settings, cache_worker):
    s = bridge_settings(settings).model_copy(update={"bridge_metrics_token": "ops-s3cret"})
    async with serving(create_app(s)) as url:
        yield url


async def test_metrics_need_the_operator_token_when_one_is_set(bridge):
    async with http(bridge) as c:
        await c.post("/api/v1/cache/get", json={"key": "m"}, headers=auth(hs_token()))
        anonymous = await c.get("/metrics")
        wrong = await c.get("/metrics", headers={"Authorization": "Bearer nope"})
        user = await c.get("/metrics", headers=auth(hs_token()))
        operator = await c.get("/metrics", headers={"Authorization": "Bearer ops-s3cret"})
    assert anonymous.status_code == wrong.status_code == user.status_code == 401
    assert "tenant" not in anonymous.text
    assert operator.status_code == 200 and "bridge_requests_total" in operator.text


async def test_without_a_token_metrics_answer_loopback_clients_only(settings):
    app = create_app(bridge_settings(settings))
    outside = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    inside = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=outside, base_url="http://bridge") as c:
        assert (await c.get("/metrics")).status_code == 403
    async with httpx.AsyncClient(transport=inside, base_url="http://bridge") as c:
        assert (await c.get("/metrics")).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/cache/set", {"namespace": "_agent", "key": "run:a:v1:x", "value": {"a": 1}}),
        ("/api/v1/cache/set", {"namespace": "_gateway", "key": "k", "value": {"tool_calls": []}}),
        ("/api/v1/cache/get", {"namespace": "_rag.query", "key": "k"}),
        ("/api/v1/cache/invalidate", {"tags": ["_agent.agt-1"]}),
    ],
)
async def test_users_cannot_reach_the_services_cache_entries(bridge, path, body):
    async with http(bridge) as c:
        r = await c.post(path, json=body, headers=auth(hs_token()))
    assert r.status_code == 403 and "reserved" in r.json()["detail"]
