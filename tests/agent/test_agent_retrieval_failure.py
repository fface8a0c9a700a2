"""Auto retrieval when the RAG service fails (docs/services/agent.md, "Retrieval and
citations"): the run goes on without passages, says so, and is not cached."""

from __future__ import annotations

import pytest

from tests.agent_env import Api
from tests.fake_llm import Document, answer
from workers.agent.runs.retrieval import UNSEARCHABLE

pytestmark = pytest.mark.usefixtures("agent_worker")


async def test_a_failed_search_leaves_the_run_without_passages_and_out_of_the_cache(api: Api, fake):
    fake.collection(api.tenant, "hr", Document("doc-vacation", "You get 25 vacation days."))
    agent = await api.agent(
        rag_collections=["hr"], retrieval={"mode": "auto"}, parameters={"temperature": 0}
    )
    fake.search_fails = True
    fake.play(answer("I could not search the documents."), repeat_last=True)
    run = await api("execute", {"agent_id": agent["agent_id"], "task": "Vacation days?"})
    assert run["status"] == "succeeded" and run["citations"] == []
    step = run["steps"][0]
    assert (step["type"], step["status"], step["error"]["code"]) == (
        "retrieval",
        "error",
        "upstream_error",
    )
    assert UNSEARCHABLE in fake.requests[0].messages[0].content
    # The answer given without the documents was not kept: asked again, the model answers.
    again = await api("execute", {"agent_id": agent["agent_id"], "task": "Vacation days?"})
    assert again["cached"] is False and len(fake.requests) == 2
