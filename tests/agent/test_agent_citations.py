"""Auto retrieval and citations over the real gateway, RAG and agent workers.

The chat alias ``local-chat`` is ``openai/m-cite`` on the scripted OpenAI-compatible server
(tests/openai_mock.py), reached through litellm by the real gateway worker; embeddings are
the real local MiniLM model, and documents are indexed and searched by the real RAG
worker. Only the model's answers are scripted, and what the model was sent is read back
from the scripted server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from bus.client import Client
from bus.errors import InvalidRequest
from bus.worker import WorkerEnv
from mesh.runner import serving
from schemas import agent as agent_ops
from schemas import rag
from schemas.operations import Operation
from tests.agent_env import AsUser, Web, search_tool
from tests.gateway_support import scripted_models, serve_gateway
from tests.openai_mock import MockOpenAI, Reply
from workers.agent.service import serving_parts as agent_parts
from workers.agent.settings import AgentConfig
from workers.gateway.config import load_config

MODEL = "m-cite"
VACATION = (
    "hr-vacation",
    "Vacation policy",
    "Vacation policy. Every full-time employee gets 25 paid vacation days per calendar "
    "year. Up to 5 unused vacation days may be carried over to the next year.",
)
PARENTAL = (
    "hr-parental",
    "Parental leave policy",
    "Parental leave policy. Parents get 16 weeks of paid parental leave after the birth or "
    "adoption of a child.",
)
PAYROLL = (
    "payroll-bonus",
    "Bonus rules",
    "Bonus rules. The yearly bonus is 40 percent of a monthly salary, paid with the vacation "
    "allowance in June.",
)


@pytest.fixture(scope="module")
async def mesh(
    env: WorkerEnv, mock: MockOpenAI, cache_worker: None, tmp_path_factory: Any
) -> AsyncIterator[None]:
    path = tmp_path_factory.mktemp("citations") / "models.yaml"
    path.write_text(yaml.safe_dump(scripted_models(mock.url, {"local-chat": MODEL})))
    async with (
        serve_gateway(load_config(str(path)), env),
        serving(["rag"], env),
        agent_parts(env, config=AgentConfig(), fetcher=Web().fetcher()) as agent,  # type: ignore[call-arg]
        agent.serve(env.nc),
    ):
        yield


pytestmark = pytest.mark.usefixtures("mesh")


class As(AsUser):
    """``agent.*`` and ``rag.*`` calls as one user of one tenant."""

    timeout = 90.0

    async def __call__(self, op: Operation[Any, Any], payload: dict[str, Any]) -> Any:
        return await self.client.call_raw(op, payload, self.ctx())

    async def stream(self, op: Operation[Any, Any], payload: dict[str, Any]) -> list[Any]:
        return [chunk async for chunk in self.client.stream_raw(op, payload, self.ctx())]

    async def agent(self, **fields: Any) -> dict[str, Any]:
        body = {"name": f"a-{uuid.uuid4().hex[:6]}", "system_prompt": "You answer HR questions."}
        return await self(agent_ops.CREATE, {**body, **fields})

    async def collection(
        self, name: str, *docs: tuple[str, str, str]
    ) -> tuple[str, dict[str, str]]:
        """A collection holding ``docs`` (source id, title, text); its id and the document
        id of each source id."""
        created = await self.client.call_raw(rag.CREATE_COLLECTION, {"name": name}, self.ctx())
        cid = str(created["collection_id"])
        out = await self.client.call_raw(
            rag.INGEST,
            {
                "collection_id": cid,
                "documents": [{"source_id": s, "title": t, "text": x} for s, t, x in docs],
            },
            self.ctx(),
        )
        return cid, {d["source_id"]: d["document_id"] for d in out["documents"]}


@pytest.fixture
def tenant(mock: MockOpenAI) -> str:
    mock.seen.clear()
    return f"cite-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def alice(client: Client, tenant: str) -> As:
    return As(client, tenant, "alice")


def _answer(text: str) -> Reply:
    return Reply(content=text)


def _call(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> Reply:
    return Reply(
        content=None,
        tool_calls=[
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
        ],
        finish_reason="tool_calls",
    )


def _sent(mock: MockOpenAI) -> str:
    """Everything the model was sent, as one string."""
    return json.dumps([s.body.get("messages") for s in mock.calls(MODEL)])


TASK = "How many vacation days do I get per year?"


async def test_auto_retrieval_puts_numbered_passages_in_the_first_model_call_and_cites_them(
    alice: As, mock: MockOpenAI
):
    cid, docs = await alice.collection("HR policy documents", VACATION, PARENTAL)
    agent = await alice.agent(rag_collections=[cid], retrieval={"mode": "auto", "top_k": 2})
    assert agent["retrieval"] == {"mode": "auto", "top_k": 2}
    mock.script(MODEL, _answer("Full-time employees get 25 paid vacation days a year [1]."))

    run = await alice(agent_ops.EXECUTE, {"agent_id": agent["agent_id"], "task": TASK})

    assert run["status"] == "succeeded", run["error"]
    (first,) = mock.calls(MODEL)
    messages = first.body["messages"]
    assert messages[-1] == {"role": "user", "content": TASK}
    system = messages[0]["content"]
    assert "cite each passage you use as [n]" in system
    assert f"[1] Vacation policy: {VACATION[2][:60]}" in system
    assert f"[2] Parental leave policy: {PARENTAL[2][:40]}" in system
    # The search is the run's first step, before the model call.
    retrieval, model_call = run["steps"]
    assert (retrieval["type"], retrieval["status"], retrieval["name"]) == (
        "retrieval",
        "ok",
        "rag.search",
    )
    assert retrieval["arguments"] == {"query": TASK, "collection_ids": [cid], "top_k": 2}
    assert [p["document_id"] for p in retrieval["result"]["passages"]] == [
        docs["hr-vacation"],
        docs["hr-parental"],
    ]
    assert model_call["type"] == "model_call"
    # The citations name the documents, numbered as the model saw them.
    vacation, parental = run["citations"]
    assert {k: vacation[k] for k in ("index", "collection_id", "document_id", "chunk_id")} == {
        "index": 1,
        "collection_id": cid,
        "document_id": docs["hr-vacation"],
        "chunk_id": retrieval["result"]["passages"][0]["chunk_id"],
    }
    assert (vacation["source_id"], vacation["title"], vacation["step"]) == (
        "hr-vacation",
        "Vacation policy",
        0,
    )
    assert vacation["quote"].startswith("Vacation policy. Every full-time employee gets 25")
    assert vacation["score"] > 0 and vacation["cited"] is True
    assert (parental["index"], parental["document_id"], parental["cited"]) == (
        2,
        docs["hr-parental"],
        False,
    )
    # Stored with the run: reading it back gives the same citations.
    again = await alice(agent_ops.GET_RUN, {"run_id": run["run_id"]})
    assert again["citations"] == run["citations"]


async def test_quotes_are_bounded_and_passages_truncated(alice: As, mock: MockOpenAI):
    long_text = "Vacation days rule. " + " ".join(f"clause{i} applies" for i in range(900))
    cid, _ = await alice.collection("Long", ("long-doc", "Long policy", long_text))
    agent = await alice.agent(rag_collections=[cid], retrieval={"mode": "auto", "top_k": 1})
    mock.script(MODEL, _answer("See [1]."))
    run = await alice(agent_ops.EXECUTE, {"agent_id": agent["agent_id"], "task": "vacation days"})
    (citation,) = run["citations"]
    assert len(citation["quote"]) <= 300
    line = next(
        ln
        for ln in mock.calls(MODEL)[0].body["messages"][0]["content"].splitlines()
        if ln.startswith("[1]")
    )
    assert len(line) <= len("[1] Long policy: ") + 1000


async def test_a_streamed_run_shows_the_retrieval_step_first_and_done_carries_the_citations(
    alice: As, mock: MockOpenAI
):
    cid, docs = await alice.collection("HR", VACATION)
    agent = await alice.agent(rag_collections=[cid], retrieval={"mode": "auto"})
    mock.script(MODEL, _answer("25 days [1]."))
    events = await alice.stream(agent_ops.STREAM, {"agent_id": agent["agent_id"], "task": TASK})
    assert events[0]["event"] == "run"
    assert events[1]["event"] == "step" and events[1]["step"]["type"] == "retrieval"
    done = events[-1]
    assert done["event"] == "done"
    assert [c["document_id"] for c in done["result"]["citations"]] == [docs["hr-vacation"]]


async def test_rag_search_tool_calls_yield_citations(alice: As, mock: MockOpenAI):
    cid, docs = await alice.collection("HR", VACATION, PARENTAL)
    agent = await alice.agent(rag_collections=[cid], tools=["rag_search"])
    assert agent["retrieval"]["mode"] == "tool"  # the default: only when the model asks
    mock.script(
        MODEL,
        _call("rag_search", {"query": "parental leave weeks"}),
        _answer("Parents get 16 weeks of paid leave (hr-parental)."),
    )
    run = await alice(
        agent_ops.EXECUTE, {"agent_id": agent["agent_id"], "task": "How long is parental leave?"}
    )
    assert run["status"] == "succeeded", run["error"]
    assert [s["type"] for s in run["steps"]] == ["model_call", "tool_call", "model_call"]
    by_doc = {c["document_id"]: c for c in run["citations"]}
    assert set(by_doc) == {docs["hr-parental"], docs["hr-vacation"]}
    parental = by_doc[docs["hr-parental"]]
    assert (parental["step"], parental["collection_id"], parental["title"]) == (
        1,
        cid,
        "Parental leave policy",
    )
    assert parental["cited"] is True and by_doc[docs["hr-vacation"]]["cited"] is False
    assert sorted(c["index"] for c in run["citations"]) == [1, 2]
    # The model saw each passage's title and collection in the tool result.
    tool_message = mock.calls(MODEL)[1].body["messages"][-1]
    assert (
        tool_message["role"] == "tool"
        and '"title": "Parental leave policy"' in (tool_message["content"])
    )


async def test_a_repeated_passage_is_cited_once(alice: As, mock: MockOpenAI):
    cid, docs = await alice.collection("HR", VACATION)
    agent = await alice.agent(
        rag_collections=[cid], tools=["rag_search"], retrieval={"mode": "auto", "top_k": 1}
    )
    mock.script(
        MODEL,
        _call("rag_search", {"query": "vacation days carried over"}),
        _answer("Up to 5 days carry over [1]."),
    )
    run = await alice(agent_ops.EXECUTE, {"agent_id": agent["agent_id"], "task": TASK})
    assert [s["type"] for s in run["steps"]][:3] == ["retrieval", "model_call", "tool_call"]
    (citation,) = run["citations"]  # found by both the retrieval and the tool call
    assert (citation["document_id"], citation["step"], citation["index"]) == (
        docs["hr-vacation"],
        0,
        1,
    )


async def test_tenant_b_never_cites_tenant_a_documents(client: Client, mock: MockOpenAI):
    a = As(client, f"cite-a-{uuid.uuid4().hex[:6]}", "alice")
    b = As(client, f"cite-b-{uuid.uuid4().hex[:6]}", "bob")
    a_cid, a_docs = await a.collection("A payroll", PAYROLL)
    b_cid, b_docs = await b.collection("B handbook", VACATION)
    # B's agent names A's collection id too: RAG does not find it for tenant B.
    agent = await b.agent(
        rag_collections=[a_cid, b_cid],
        tools=["rag_search"],
        retrieval={"mode": "auto", "top_k": 3},
    )
    mock.script(
        MODEL,
        _call("rag_search", {"query": "yearly bonus", "collection_ids": [a_cid]}),
        _answer("I found nothing about a bonus."),
    )
    run = await b(
        agent_ops.EXECUTE, {"agent_id": agent["agent_id"], "task": "What is the yearly bonus?"}
    )

    assert run["status"] == "succeeded", run["error"]
    retrieval = run["steps"][0]
    assert retrieval["status"] == "ok"
    assert retrieval["result"]["skipped"] == [{"collection_id": a_cid, "code": "not_found"}]
    tool = run["steps"][2]
    assert tool["type"] == "tool_call" and tool["status"] == "error"
    assert [c["document_id"] for c in run["citations"]] == [b_docs["hr-vacation"]]
    assert all(c["collection_id"] == b_cid for c in run["citations"])
    assert a_docs["payroll-bonus"] not in json.dumps(run)
    assert "40 percent" not in _sent(mock)


async def test_a_user_without_access_to_a_collection_gets_no_passages_from_it(
    client: Client, tenant: str, mock: MockOpenAI
):
    """Only the role-gated tool ``payroll_search`` reaches the payroll collection, so auto
    retrieval searches it only for users holding that tool's role."""
    admin = As(client, tenant, "root", "agent:admin")
    hr_cid, hr_docs = await admin.collection("HR", VACATION)
    pay_cid, pay_docs = await admin.collection("Payroll", PAYROLL)
    await admin(
        agent_ops.CREATE_TOOL,
        search_tool(
            "payroll_search",
            "Search the payroll rules.",
            [pay_cid],
            required_roles=["hr:payroll"],
        ),
    )
    agent = await admin.agent(
        rag_collections=[hr_cid, pay_cid],
        tools=["payroll_search"],
        retrieval={"mode": "auto", "top_k": 4},
    )
    task = "When is the yearly bonus paid, and with the vacation allowance?"

    bob = As(client, tenant, "bob")  # no hr:payroll
    mock.script(
        MODEL, _call("payroll_search", {"query": "bonus"}), _answer("I cannot see payroll.")
    )
    run = await bob(agent_ops.EXECUTE, {"agent_id": agent["agent_id"], "task": task})
    assert run["status"] == "succeeded", run["error"]
    retrieval = run["steps"][0]
    assert retrieval["arguments"]["collection_ids"] == [hr_cid]
    assert retrieval["result"]["skipped"] == [{"collection_id": pay_cid, "code": "forbidden"}]
    assert run["steps"][2]["status"] == "refused"  # the gated tool, asked for anyway
    assert [c["document_id"] for c in run["citations"]] == [hr_docs["hr-vacation"]]
    assert "40 percent" not in _sent(mock)

    mock.seen.clear()
    carol = As(client, tenant, "carol", "hr:payroll")
    mock.script(MODEL, _answer("In June, with the vacation allowance."))
    run = await carol(agent_ops.EXECUTE, {"agent_id": agent["agent_id"], "task": task})
    assert run["steps"][0]["arguments"]["collection_ids"] == [hr_cid, pay_cid]
    assert pay_docs["payroll-bonus"] in [c["document_id"] for c in run["citations"]]
    assert "40 percent" in _sent(mock)


async def test_a_cached_answer_keeps_its_citations(alice: As, mock: MockOpenAI):
    cid, docs = await alice.collection("HR", VACATION)
    agent = await alice.agent(
        rag_collections=[cid],
        retrieval={"mode": "auto", "top_k": 1},
        parameters={"temperature": 0},
    )
    mock.script(MODEL, _answer("25 days [1]."))
    first = await alice(agent_ops.EXECUTE, {"agent_id": agent["agent_id"], "task": TASK})
    second = await alice(agent_ops.EXECUTE, {"agent_id": agent["agent_id"], "task": TASK})
    assert second["cached"] is True and len(mock.calls(MODEL)) == 1
    assert [s["type"] for s in second["steps"]] == ["retrieval", "cache_hit"]
    assert second["citations"] == [{**c, "step": 0} for c in first["citations"]]
    assert second["citations"][0]["document_id"] == docs["hr-vacation"]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"retrieval": {"mode": "auto"}}, "has none"),
        ({"retrieval": {"mode": "always"}, "rag_collections": ["c"]}, "mode"),
        ({"retrieval": {"mode": "auto", "top_k": 11}, "rag_collections": ["c"]}, "top_k"),
        ({"retrieval": {"mode": "auto", "top_k": 0}, "rag_collections": ["c"]}, "top_k"),
        ({"retrieval": {"mode": "auto", "k": 3}, "rag_collections": ["c"]}, "k"),
        ({"retrieval": "auto", "rag_collections": ["c"]}, "retrieval"),
    ],
)
async def test_bad_retrieval_settings_are_invalid_requests(
    alice: As, fields: dict[str, Any], why: str
):
    with pytest.raises(InvalidRequest) as exc:
        await alice.agent(**fields)
    assert why in str(exc.value.message) + json.dumps(exc.value.details)


async def test_an_update_cannot_leave_auto_retrieval_without_collections(alice: As):
    agent = await alice.agent(rag_collections=["c1"], retrieval={"mode": "auto"})
    with pytest.raises(InvalidRequest, match="has none"):
        await alice(
            agent_ops.UPDATE, {"agent_id": agent["agent_id"], "version": 1, "rag_collections": []}
        )
    changed = await alice(
        agent_ops.UPDATE,
        {
            "agent_id": agent["agent_id"],
            "version": 1,
            "rag_collections": [],
            "retrieval": {"mode": "tool"},
        },
    )
    assert changed["retrieval"] == {"mode": "tool", "top_k": 4}
