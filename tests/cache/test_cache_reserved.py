"""Issue 10, item 6: the services' own cache entries (gateway answers with tool calls, RAG
answers, agent run results) cannot be read, planted or dropped by users."""

from __future__ import annotations

import pytest

from bus.client import Client
from bus.context import new_context
from bus.errors import Forbidden, InvalidRequest
from gateway_bridge.routes import ROUTES
from schemas import cache
from schemas.cache import CacheGetResponse

pytestmark = pytest.mark.usefixtures("cache_worker")


def ctx(tenant: str = "acme"):
    return new_context(tenant, user="mallory", timeout=5.0)


@pytest.mark.parametrize(
    ("op", "payload"),
    [
        ("set", {"namespace": "_agent", "key": "run:agt-1:v1:abc", "value": {"answer": "x"}}),
        ("set", {"namespace": "_gateway", "key": "k", "value": {"tool_calls": []}}),
        ("get", {"namespace": "_rag.query", "key": "k"}),
        ("delete", {"namespace": "_agent", "keys": ["k"]}),
        ("invalidate", {"namespace": "_gateway"}),
        ("invalidate", {"tags": ["_agent.agt-1"]}),
        ("set", {"namespace": "mine", "key": "k", "value": 1, "tags": ["_agent.agt-1"]}),
    ],
)
async def test_public_operations_refuse_reserved_names(client: Client, op, payload):
    with pytest.raises(Forbidden, match="reserved"):
        await client.request(f"cache.{op}.request", payload, ctx())


async def test_a_planted_answer_never_reaches_the_services_entries(client: Client):
    # What a user could write before: the same key in the service's old namespace.
    await client.request(
        "cache.set.request",
        {"namespace": "agent", "key": "run:agt-1:v1:abc", "value": {"planted": True}},
        ctx(),
    )
    found = await client.call(
        cache.INTERNAL_GET, {"namespace": "_agent", "key": "run:agt-1:v1:abc"}, ctx()
    )
    assert found.hit is False
    await client.call(
        cache.INTERNAL_SET,
        {"namespace": "_agent", "key": "run:agt-1:v1:abc", "value": {"real": True}},
        ctx(),
    )
    found = await client.call(
        cache.INTERNAL_GET, {"namespace": "_agent", "key": "run:agt-1:v1:abc"}, ctx()
    )
    assert found == CacheGetResponse(hit=True, value={"real": True})


async def test_internal_operations_take_reserved_names_only(client: Client):
    with pytest.raises(InvalidRequest, match="reserved names only"):
        await client.call(cache.INTERNAL_SET, {"namespace": "mine", "key": "k", "value": 1}, ctx())


def test_the_bridge_has_no_route_to_the_internal_operations():
    subjects = {route.op.subject for route in ROUTES}
    assert cache.GET.subject in subjects
    for op in (cache.INTERNAL_GET, cache.INTERNAL_SET, cache.INTERNAL_INVALIDATE):
        assert op.subject not in subjects


def test_the_bridge_nats_user_may_not_call_them():
    from pathlib import Path

    conf = (Path(__file__).parents[2] / "deploy" / "nats" / "nats-auth.conf").read_text()
    bridge = conf[conf.index("{ user: bridge") :]
    deny = bridge[bridge.index("deny:") : bridge.index("allow:")]
    for op in (cache.INTERNAL_GET, cache.INTERNAL_SET, cache.INTERNAL_INVALIDATE):
        assert op.subject in deny
