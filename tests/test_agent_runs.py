"""Agent runs against the scripted model: tools, limits, replay, injection, roles, approval."""

from __future__ import annotations

import json

import pytest

from tests.agent_env import Api, agent_worker, fake, fake_services, web  # noqa: F401
from tests.agent_env import api, tenant  # noqa: F401
from tests.fake_llm import Document, answer, call

pytestmark = pytest.mark.usefixtures("agent_worker")


async def test_rag_agent_answers_by_calling_rag_search_and_cites_the_document(api: Api, fake):
    fake.collection(
        api.tenant,
        "handbook",
        Document("doc-vacation", "Employees get 25 vacation days per year."),
        Document("doc-parking", "Parking is free on level 2."),
    )
    agent = await api.agent(rag_collections=["handbook"], tools=["rag_search"])
    fake.play(
        call("rag_search", {"query": "how many vacation days"}),
        answer("You get 25 vacation days per year [doc-vacation]."),
    )
    run = await api("execute", {"agent_id": agent["agent_id"], "task": "How many vacation days?"})
    assert run["status"] == "succeeded"
    assert run["output"] == "You get 25 vacation days per year [doc-vacation]."
    assert [(s["type"], s["status"], s["name"]) for s in run["steps"]] == [
        ("model_call", "ok", "local-chat"),
        ("tool_call", "ok", "rag_search"),
        ("model_call", "ok", "local-chat"),
    ]
    found = run["steps"][1]["result"]["results"]
    assert found[0]["document_id"] == "doc-vacation"
    # The search went to the granted collection, as this tenant.
    tenant_seen, search = fake.searches[0]
    assert tenant_seen == api.tenant and search.collection_ids == ["handbook"]
    # The model saw the passage, marked as untrusted data, before it answered.
    tool_message = fake.requests[1].messages[-1]
    assert tool_message.role == "tool"
    shown = json.loads(tool_message.content)
    assert shown["untrusted"] is True and shown["data"]["results"][0]["document_id"] == "doc-vacation"
