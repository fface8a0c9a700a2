"""Tenant B can neither read nor run nor change tenant A's agents, threads, runs, memories."""

from __future__ import annotations

import uuid

import pytest

from bus.errors import NotFound
from tests.agent_env import Api
from tests.fake_llm import answer, call

pytestmark = pytest.mark.usefixtures("agent_worker")


@pytest.fixture
async def tenant_a(api: Api, fake) -> dict:
    """Tenant A's agent with a finished run, a paused run, a thread and a memory item."""
    agent = await api.agent(
        name="shared-name", tools=["memory_write"], approval_required=["memory_write"]
    )
    aid = agent["agent_id"]
    fake.play(answer("hello"))
    chat = await api("chat", {"agent_id": aid, "message": "hi"})
    fake.play(call("memory_write", {"text": "x"}))
    paused = await api("execute", {"agent_id": aid, "task": "remember x"})
    assert paused["status"] == "requires_approval"
    memory = await api("add_memory", {"agent_id": aid, "text": "A's secret"})
    return {
        "agent_id": aid,
        "thread_id": chat["thread_id"],
        "run_id": chat["run_id"],
        "paused_run_id": paused["run_id"],
        "memory_id": memory["memory_id"],
    }


def _b(api: Api) -> Api:
    # Same user name and every role: only the tenant differs.
    return api.as_(tenant=f"tb-{uuid.uuid4().hex[:8]}", roles=("agent:admin", "tools:http"))


OPERATIONS = [
    ("get", lambda a: {"agent_id": a["agent_id"]}),
    ("update", lambda a: {"agent_id": a["agent_id"], "version": 1, "description": "pwned"}),
    ("delete", lambda a: {"agent_id": a["agent_id"], "hard": True}),
    ("execute", lambda a: {"agent_id": a["agent_id"], "task": "hi"}),
    ("execute", lambda a: {"agent_id": a["agent_id"], "task": "hi", "background": True}),
    ("chat", lambda a: {"agent_id": a["agent_id"], "message": "hi"}),
    ("chat", lambda a: {"agent_id": a["agent_id"], "thread_id": a["thread_id"], "message": "hi"}),
    ("list_runs", lambda a: {"agent_id": a["agent_id"]}),
    ("get_run", lambda a: {"run_id": a["run_id"]}),
    ("approve", lambda a: {"run_id": a["paused_run_id"]}),
    ("reject", lambda a: {"run_id": a["paused_run_id"]}),
    ("cancel", lambda a: {"run_id": a["paused_run_id"]}),
    ("list_threads", lambda a: {"agent_id": a["agent_id"]}),
    ("get_thread", lambda a: {"thread_id": a["thread_id"]}),
    ("delete_thread", lambda a: {"thread_id": a["thread_id"]}),
    ("list_memories", lambda a: {"agent_id": a["agent_id"]}),
    ("search_memories", lambda a: {"agent_id": a["agent_id"], "query": "secret"}),
    ("add_memory", lambda a: {"agent_id": a["agent_id"], "text": "planted"}),
    ("delete_memory", lambda a: {"agent_id": a["agent_id"], "memory_id": a["memory_id"]}),
]


@pytest.mark.parametrize(
    ("op", "payload"), OPERATIONS, ids=[f"{o}-{i}" for i, (o, _) in enumerate(OPERATIONS)]
)
async def test_tenant_b_gets_not_found_for_tenant_a(api: Api, fake, tenant_a, op, payload):
    with pytest.raises(NotFound):
        await _b(api)(op, payload(tenant_a))
    assert len(fake.requests) == 2  # only A's own two model calls: B never reached it


async def test_tenant_b_cannot_watch_tenant_a_runs(api: Api, tenant_a):
    with pytest.raises(NotFound):
        await _b(api).stream("watch", {"run_id": tenant_a["run_id"]})


async def test_tenant_b_sees_none_of_tenant_a_in_lists_and_a_is_untouched(api: Api, fake, tenant_a):
    b = _b(api)
    assert (await b("list", {"include_archived": True}))["items"] == []
    # B may use the same agent name: names are per tenant.
    assert (await b.agent(name="shared-name"))["name"] == "shared-name"
    a = await api("get", {"agent_id": tenant_a["agent_id"]})
    assert a["version"] == 1 and a["status"] == "active"
    assert len((await api("list_memories", {"agent_id": tenant_a["agent_id"]}))["items"]) == 1
    run = await api("get_run", {"run_id": tenant_a["paused_run_id"]})
    assert run["status"] == "requires_approval"
