"""The loop guard and the granted-collections schema (docs/services/agent.md "Repeated calls",
"rag_search parameters"): an identical call runs once, then the model must answer."""

from __future__ import annotations

import json

import pytest

from tests.agent_env import Api, search_tool
from tests.fake_llm import Document, answer, call
from workers.agent import tools

pytestmark = pytest.mark.usefixtures("agent_worker")


def _kinds(run: dict) -> list[tuple[str, str]]:
    return [(s["type"], s["status"]) for s in run["steps"]]


async def test_a_repeated_call_runs_once_and_the_model_must_then_answer(api: Api, fake):
    fake.collection(api.tenant, "hr", Document("doc-vacation", "You get 25 vacation days."))
    agent = await api.agent(rag_collections=["hr"], tools=["rag_search"])
    fake.play(
        call("rag_search", {"query": "vacation days", "top_k": 3}, "c1"),
        # The same call again, keys in another order: the same canonical JSON.
        call("rag_search", {"top_k": 3, "query": "vacation days"}, "c2"),
        answer("25 vacation days [doc-vacation]."),
    )
    run = await api("execute", {"agent_id": agent["agent_id"], "task": "Vacation days?"})
    assert run["status"] == "succeeded" and run["output"] == "25 vacation days [doc-vacation]."
    assert _kinds(run) == [
        ("model_call", "ok"),
        ("tool_call", "ok"),
        ("model_call", "ok"),
        ("tool_call", "repeated"),
        ("model_call", "ok"),
    ]
    assert len(fake.searches) == 1  # executed once
    repeated = run["steps"][3]
    assert repeated["tool_call_id"] == "c2"
    assert repeated["result"] == {"repeat_of": "c1", "step": 1}
    # The model is told, and its next call may not call tools.
    told = json.loads(fake.requests[2].messages[-1].content)
    assert told["error"]["code"] == "repeated" and "c1" in told["error"]["message"]
    assert [r.tool_choice for r in fake.requests] == [None, None, "none"]
    assert repeated_choice(run) == "none"


def repeated_choice(run: dict) -> str | None:
    return run["steps"][4]["arguments"].get("tool_choice")


async def test_calls_with_different_arguments_all_run(api: Api, fake):
    agent = await api.agent(tools=["calculator"])
    fake.play(
        call("calculator", {"expression": "1+1"}, "a"),
        call("calculator", {"expression": "2+2"}, "b"),
        answer("2 and 4"),
    )
    run = await api("execute", {"agent_id": agent["agent_id"], "task": "sums"})
    assert run["status"] == "succeeded"
    assert [s["status"] for s in run["steps"] if s["type"] == "tool_call"] == ["ok", "ok"]
    assert [r.tool_choice for r in fake.requests] == [None, None, None]


async def test_a_model_that_keeps_repeating_still_ends_at_the_step_limit(api: Api, fake):
    agent = await api.agent(tools=["calculator"], limits={"max_steps": 4})
    fake.play(
        call("calculator", {"expression": "1+1"}, "a"),
        call("calculator", {"expression": "1+1"}, "b"),
        call("calculator", {"expression": "1+1"}, "c"),
        call("calculator", {"expression": "1+1"}, "d"),
    )
    run = await api("execute", {"agent_id": agent["agent_id"], "task": "loop"})
    assert run["status"] == "failed" and run["error"]["code"] == "step_limit"
    tool_steps = [s["status"] for s in run["steps"] if s["type"] == "tool_call"]
    assert tool_steps == ["ok", "repeated", "repeated", "repeated"]


async def test_a_repeated_approval_call_is_not_asked_or_run_twice(api: Api, fake):
    agent = await api.agent(tools=["memory_write"], approval_required=["memory_write"])
    fake.play(
        call("memory_write", {"text": "Alice drinks tea"}, "m1"),
        call("memory_write", {"text": "Alice drinks tea"}, "m2"),
        answer("Noted."),
    )
    run = await api("execute", {"agent_id": agent["agent_id"], "task": "Remember: tea"})
    assert run["status"] == "requires_approval"
    assert [p["tool_call_id"] for p in run["pending_approvals"]] == ["m1"]
    done = await api.as_(user="boss", roles=("agent:approve",))(
        "approve", {"run_id": run["run_id"], "tool_call_id": "m1"}
    )
    assert done["status"] == "succeeded" and done["output"] == "Noted."
    assert [s["status"] for s in done["steps"] if s["type"] == "tool_call"] == ["ok", "repeated"]
    items = (await api("list_memories", {"agent_id": agent["agent_id"]}))["items"]
    assert [i["text"] for i in items] == ["Alice drinks tea"]


async def test_a_tool_error_may_be_retried_with_the_same_arguments(api: Api, fake):
    # A tool_error (a timeout, a service down) is not final: an identical retry runs.
    agent = await api.agent(tools=["calculator"])
    fake.play(
        call("calculator", {"expression": "1/0"}, "a"),
        call("calculator", {"expression": "1/0"}, "b"),
        answer("cannot divide by zero"),
    )
    run = await api("execute", {"agent_id": agent["agent_id"], "task": "1/0"})
    assert run["status"] == "succeeded"
    errors = [s["error"]["code"] for s in run["steps"] if s["type"] == "tool_call"]
    assert errors == ["tool_error", "tool_error"]
    assert [r.tool_choice for r in fake.requests] == [None, None, None]


async def test_an_invalid_call_repeated_identically_is_not_checked_again(api: Api, fake):
    agent = await api.agent(tools=["calculator"])
    fake.play(
        call("calculator", {"expr": "1"}, "a"),
        call("calculator", {"expr": "1"}, "b"),
        answer("sorry"),
    )
    run = await api("execute", {"agent_id": agent["agent_id"], "task": "1"})
    assert [s["status"] for s in run["steps"] if s["type"] == "tool_call"] == ["error", "repeated"]
    assert run["status"] == "succeeded" and fake.requests[2].tool_choice == "none"


def test_rag_search_offers_only_the_granted_collections():
    def params(granted: list[str]) -> dict:
        box = tools.Toolbox(["rag_search"], {}, roles=(), collections=granted)
        return box.offered[0].parameters

    # No granted collection: nothing to choose, the parameter is left out.
    assert "collection_ids" not in params([])["properties"]
    assert params(["hr"])["properties"]["collection_ids"]["items"]["enum"] == ["hr"]
    two = params(["hr", "legal"])["properties"]["collection_ids"]
    assert two["items"]["enum"] == ["hr", "legal"] and two["maxItems"] == 2
    # The shared built-in is not changed for other agents.
    assert (
        "enum"
        not in tools.BUILTINS["rag_search"].parameters["properties"]["collection_ids"]["items"]
    )
    box = tools.Toolbox(["rag_search"], {}, roles=(), collections=["hr", "legal"])
    made_up = box.decide("rag_search", json.dumps({"query": "x", "collection_ids": ["vacation"]}))
    assert made_up.invalid is not None and "vacation" in made_up.invalid
    assert (
        box.decide("rag_search", json.dumps({"query": "x", "collection_ids": ["hr"]})).invalid
        is None
    )


async def test_the_offered_rag_schema_reaches_the_model(api: Api, fake):
    agent = await api.agent(tools=["rag_search"], rag_collections=["hr", "legal"])
    fake.play(answer("ok"))
    await api("execute", {"agent_id": agent["agent_id"], "task": "hi"})
    (offered,) = fake.requests[0].tools
    schema = offered.function.parameters
    assert schema["properties"]["collection_ids"]["items"]["enum"] == ["hr", "legal"]


async def test_the_executor_still_refuses_an_ungranted_collection(api: Api, fake):
    # A declarative tool's fixed arguments are not the model's: the executor's check stays.
    fake.collection(api.tenant, "secret", Document("d2", "secret text"))
    await api.as_(roles=("tools:write",))(
        "create_tool", search_tool("secret_search", "Search the secret collection.", ["secret"])
    )
    agent = await api.agent(tools=["secret_search"], rag_collections=["public"])
    fake.play(call("secret_search", {"query": "text"}), answer("no"))
    run = await api("execute", {"agent_id": agent["agent_id"], "task": "find"})
    assert run["steps"][1]["status"] == "refused"
    assert "secret" in run["steps"][1]["error"]["message"]
    assert fake.searches == []


async def test_the_last_model_call_the_step_limit_allows_must_answer(api: Api, fake):
    agent = await api.agent(tools=["calculator"], limits={"max_steps": 2})
    fake.play(call("calculator", {"expression": "2+2"}, "a"), answer("It is 4."))
    run = await api("execute", {"agent_id": agent["agent_id"], "task": "2+2?"})
    assert run["status"] == "succeeded" and run["output"] == "It is 4."
    assert [r.tool_choice for r in fake.requests] == [None, "none"]
    last = run["steps"][2]["arguments"]
    assert last["tool_choice"] == "none" and last["final"] is True


async def test_an_agent_allowed_one_model_call_answers_without_tools(api: Api, fake):
    agent = await api.agent(tools=["calculator"], limits={"max_steps": 1})
    fake.play(answer("Four."))
    run = await api("execute", {"agent_id": agent["agent_id"], "task": "2+2?"})
    assert run["status"] == "succeeded"
    assert [r.tool_choice for r in fake.requests] == ["none"]
