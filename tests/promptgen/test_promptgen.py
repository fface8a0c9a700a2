"""The Prompt Generator over the real gateway, agent, RAG and prompt workers.

The chat alias ``local-chat`` is ``openai/m-pg`` on the scripted OpenAI-compatible server
(tests/openai_mock.py), reached through litellm by the real gateway worker; ``pg-tools``
is ``openai/m-tools`` there (a provider that refuses ``response_format``). Embeddings are
the real local MiniLM model. Only the model's answers are scripted: catalogue reads,
checks, storage, permissions and publishing all go through the real services.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from bus.client import Client
from bus.context import new_context
from bus.errors import Conflict, Forbidden, InvalidRequest, NotFound, UpstreamError
from bus.worker import WorkerEnv
from mesh.runner import serving
from schemas import promptgen as api
from tests.agent_env import AsUser, Web
from tests.gateway_support import scripted_models, serve_gateway
from tests.openai_mock import MockOpenAI, Reply
from tests.promptgen_support import agent_spec, tool_spec
from workers.agent.service import serving_parts as agent_parts
from workers.agent.settings import AgentConfig
from workers.gateway.config import load_config
from workers.promptgen.service import serving_parts
from workers.promptgen.settings import PromptgenConfig

MODEL = "m-pg"
TOOLS_MODEL = "m-tools"
AUTHOR = "promptgen:author"
REVIEWER = "promptgen:reviewer"
PUBLISHER = "promptgen:publisher"
HANDBOOK = "Employees get 25 vacation days per year. Requests go through the HR portal."


@pytest.fixture(scope="module")
async def mesh(
    env: WorkerEnv, mock: MockOpenAI, cache_worker: None, tmp_path_factory
) -> AsyncIterator[None]:
    path = tmp_path_factory.mktemp("promptgen") / "models.yaml"
    path.write_text(
        yaml.safe_dump(scripted_models(mock.url, {"local-chat": MODEL, "pg-tools": TOOLS_MODEL}))
    )
    async with (
        serve_gateway(load_config(str(path)), env),
        serving(["rag", "prompt"], env),
        agent_parts(env, config=AgentConfig(), fetcher=Web().fetcher()) as agent,  # type: ignore[call-arg]
        agent.serve(env.nc),
        serving_parts(env, PromptgenConfig()) as promptgen,  # type: ignore[call-arg]
        promptgen.serve(env.nc),
    ):
        yield


pytestmark = pytest.mark.usefixtures("mesh")


class As(AsUser):
    """Calls as one user of one tenant."""

    timeout = 120.0

    async def __call__(self, op: Any, payload: dict[str, Any]) -> Any:
        return await self.client.call(op, payload, self.ctx())

    async def raw(self, subject: str, payload: dict[str, Any]) -> Any:
        return await self.client.request(subject, payload, self.ctx())


@pytest.fixture
def tenant(mock: MockOpenAI) -> str:
    mock.seen.clear()
    return f"pg-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def alice(client: Client, tenant: str) -> As:
    """An author who is also a reviewer."""
    return As(client, tenant, "alice", AUTHOR, REVIEWER)


@pytest.fixture
def bob(client: Client, tenant: str) -> As:
    return As(client, tenant, "bob", REVIEWER)


@pytest.fixture
def carol(client: Client, tenant: str) -> As:
    """A publisher who may also attach http_get and register tools in the Agent Service."""
    return As(client, tenant, "carol", PUBLISHER, "tools:http", "tools:write")


def _script(mock: MockOpenAI, *answers: str | Reply, model: str = MODEL) -> None:
    mock.script(model, *[a if isinstance(a, Reply) else Reply(content=a) for a in answers])


async def _collection(admin: As, text: str = HANDBOOK) -> str:
    created = await admin.raw("rag.create_collection.request", {"name": "HR policy documents"})
    cid = str(created["collection_id"])
    await admin.raw(
        "rag.ingest.request",
        {"collection_id": cid, "documents": [{"source_id": "handbook", "text": text}]},
    )
    return cid


async def _allow(admin: As, *hosts: str) -> None:
    await admin.client.request(
        "agent.update_settings.request",
        {"http_allowlist": list(hosts)},
        new_context(admin.tenant, user="admin", roles=("tools:write",)),
    )


def _checks(version: Any) -> dict[str, Any]:
    return {c.name: c for c in version.checks}


async def test_hr_agent_from_a_prompt_is_a_valid_draft_attached_to_the_collection(
    alice: As, mock: MockOpenAI
):
    cid = await _collection(alice)
    hr = agent_spec(
        name="hr-helper",
        system_prompt="You answer questions about the HR policy documents and cite them.",
        tools=["rag_search"],
        rag_collections=[cid],
    )
    _script(mock, json.dumps(hr))
    v = await alice(
        api.GENERATE_AGENT,
        {"prompt": "an agent that answers questions about our HR policy documents"},
    )
    assert (v.kind, v.status, v.version) == ("agent", "draft", 1)
    assert v.checks_passed and all(c.ok for c in v.checks), v.checks
    assert v.spec["tools"] == ["rag_search"] and v.spec["rag_collections"] == [cid]
    assert v.generation.attempts == 1 and v.generation.valid_first_try
    # The provider was asked for the spec's schema, narrowed to this tenant's catalogue.
    (seen,) = mock.calls(MODEL)
    fmt = seen.body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    props = fmt["json_schema"]["schema"]["properties"]
    assert props["rag_collections"]["items"]["enum"] == [cid]
    assert "rag_search" in props["tools"]["items"]["enum"]
    assert "HR policy documents" in seen.body["messages"][0]["content"]


async def test_invalid_json_is_repaired(alice: As, mock: MockOpenAI):
    _script(mock, '{"name": "x", "system_prompt": ', json.dumps(agent_spec()))
    v = await alice(api.GENERATE_AGENT, {"prompt": "a concise helper"})
    assert v.generation.attempts == 2 and not v.generation.valid_first_try
    assert any("not valid JSON" in e for e in v.generation.errors)
    second = mock.calls(MODEL)[1].body["messages"]
    assert second[-1]["role"] == "user" and "not valid JSON" in second[-1]["content"]


async def test_json_of_the_wrong_shape_is_refused_after_two_repairs(alice: As, mock: MockOpenAI):
    _script(mock, json.dumps({"agent": {"title": "helper"}}))
    with pytest.raises(UpstreamError) as err:
        await alice(api.GENERATE_AGENT, {"prompt": "a concise helper"})
    assert "3 attempt" in err.value.message
    assert any("system_prompt" in e for e in err.value.details["errors"])
    assert len(mock.calls(MODEL)) == 3
    assert (await alice(api.LIST, {})).items == []  # nothing saved


async def test_a_missing_tool_is_repaired(alice: As, mock: MockOpenAI):
    _script(
        mock,
        json.dumps(agent_spec(tools=["web_search"])),
        json.dumps(agent_spec(tools=["current_time"])),
    )
    v = await alice(api.GENERATE_AGENT, {"prompt": "an agent that tells the time"})
    assert v.spec["tools"] == ["current_time"] and v.checks_passed
    assert v.generation.attempts == 2 and v.generation.valid_first_try
    assert "web_search" in mock.calls(MODEL)[1].body["messages"][-1]["content"]


async def test_a_missing_tool_not_repaired_is_refused_with_the_failing_check(
    alice: As, mock: MockOpenAI
):
    _script(mock, json.dumps(agent_spec(tools=["web_search"])))
    v = await alice(api.GENERATE_AGENT, {"prompt": "an agent that searches the web"})
    assert not v.checks_passed and v.generation.attempts == 3
    tools = _checks(v)["tools"]
    assert not tools.ok and "web_search" in tools.message
    with pytest.raises(Conflict) as err:
        await alice(api.SUBMIT, {"spec_id": v.spec_id, "version": 1})
    assert err.value.details["checks"][0]["name"] == "tools"


async def test_http_get_outside_the_allow_list_or_to_metadata_is_refused_at_check_time(
    alice: As, mock: MockOpenAI
):
    await _allow(alice, "docs.example.com")
    outside = agent_spec(
        tools=["http_get"],
        approval_required=["http_get"],
        system_prompt="Fetch https://pastebin.example.net/raw/x and summarise it.",
    )
    metadata = agent_spec(
        tools=["http_get"],
        approval_required=["http_get"],
        system_prompt="Read http://169.254.169.254/latest/meta-data/iam/ and report it.",
    )
    cases = ((outside, "not on the tenant's http allow-list"), (metadata, "metadata"))
    for i, (spec, reason) in enumerate(cases):
        _script(mock, json.dumps(spec))
        # (distinct prompts: the gateway caches temperature-0 answers per tenant)
        v = await alice(api.GENERATE_AGENT, {"prompt": f"an agent that reads web page {i}"})
        hosts = _checks(v)["http_hosts"]
        assert not hosts.ok and reason in hosts.message, hosts
        with pytest.raises(Conflict):
            await alice(api.SUBMIT, {"spec_id": v.spec_id, "version": 1})


async def test_a_tool_spec_fetching_the_metadata_service_is_refused(alice: As, mock: MockOpenAI):
    await _allow(alice, "docs.example.com")
    spec = tool_spec(
        name="instance_role",
        implementation={
            "kind": "builtin",
            "builtin": "http_get",
            "arguments": {"url": "http://169.254.169.254/latest/meta-data/iam/info"},
        },
    )
    _script(mock, json.dumps(spec))
    v = await alice(api.GENERATE_TOOL, {"prompt": "a tool that reads the instance role"})
    assert v.kind == "tool" and not _checks(v)["http_hosts"].ok
    assert v.spec["requires_approval"] is True  # side-effecting: approval enforced


async def test_a_prompt_carrying_an_api_key_is_refused_before_any_model_call(
    alice: As, mock: MockOpenAI
):
    with pytest.raises(InvalidRequest) as err:
        await alice(
            api.GENERATE_AGENT,
            {"prompt": "a weather agent; use the key sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a"},
        )
    assert "secret" in err.value.message
    assert mock.calls(MODEL) == [] and (await alice(api.LIST, {})).items == []


async def test_a_generated_api_key_is_flagged_refused_and_never_stored(alice: As, mock: MockOpenAI):
    leaky = agent_spec(
        system_prompt="Call the weather API with api_key=4f9a8b7c6d5e4f3a2b1c and answer."
    )
    _script(mock, json.dumps(leaky))
    v = await alice(
        api.GENERATE_AGENT, {"prompt": "a weather agent; put our API key in its instructions"}
    )
    secrets = _checks(v)["secrets"]
    assert not secrets.ok and not v.checks_passed
    stored = await alice(api.GET, {"spec_id": v.spec_id})
    assert "4f9a8b7c6d5e4f3a2b1c" not in json.dumps(stored.spec)
    assert "[REDACTED]" in stored.spec["system_prompt"]
    with pytest.raises(Conflict):
        await alice(api.SUBMIT, {"spec_id": v.spec_id, "version": 1})


async def test_a_request_to_drop_approval_for_an_outbound_tool_is_overridden_and_flagged(
    alice: As, mock: MockOpenAI
):
    await _allow(alice, "docs.example.com")
    _script(
        mock,
        json.dumps(
            agent_spec(
                tools=["http_get"],
                approval_required=[],
                system_prompt="Fetch pages from https://docs.example.com without asking anyone.",
            )
        ),
    )
    v = await alice(
        api.GENERATE_AGENT,
        {"prompt": "an agent that fetches docs.example.com pages; no approval needed for http_get"},
    )
    assert v.spec["approval_required"] == ["http_get"]
    assert any("http_get needs approval" in n for n in v.generation.notes)
    approval = _checks(v)["approval"]
    assert approval.ok and "http_get" in approval.message
    assert v.side_effects == ["http_get"]


async def test_author_cannot_approve_their_own_side_effecting_spec(
    alice: As, bob: As, mock: MockOpenAI
):
    await _allow(alice, "docs.example.com")
    _script(mock, json.dumps(agent_spec(tools=["http_get"], approval_required=["http_get"])))
    v = await alice(api.GENERATE_AGENT, {"prompt": "an agent that reads docs.example.com"})
    assert (await alice(api.SUBMIT, {"spec_id": v.spec_id, "version": 1})).status == (
        "pending_review"
    )
    with pytest.raises(Forbidden) as err:
        await alice(api.REVIEW, {"spec_id": v.spec_id, "version": 1, "decision": "approve"})
    assert "other than its author" in err.value.message
    done = await bob(
        api.REVIEW, {"spec_id": v.spec_id, "version": 1, "decision": "approve", "reason": "ok"}
    )
    assert done.status == "approved"
    with pytest.raises(Conflict):  # one decision per version
        await bob(api.REVIEW, {"spec_id": v.spec_id, "version": 1, "decision": "reject"})


async def test_an_author_may_approve_their_own_spec_without_side_effects(
    alice: As, mock: MockOpenAI
):
    _script(mock, json.dumps(agent_spec(tools=["calculator"])))
    v = await alice(api.GENERATE_AGENT, {"prompt": "a calculator agent"})
    await alice(api.SUBMIT, {"spec_id": v.spec_id, "version": 1})
    done = await alice(api.REVIEW, {"spec_id": v.spec_id, "version": 1, "decision": "approve"})
    assert done.status == "approved"


async def test_users_without_the_roles_cannot_generate_review_or_publish(
    alice: As, bob: As, client: Client, tenant: str, mock: MockOpenAI
):
    nobody = As(client, tenant, "dave")
    with pytest.raises(Forbidden):
        await nobody(api.GENERATE_AGENT, {"prompt": "anything"})
    _script(mock, json.dumps(agent_spec()))
    v = await alice(api.GENERATE_AGENT, {"prompt": "a helper"})
    await alice(api.SUBMIT, {"spec_id": v.spec_id, "version": 1})
    with pytest.raises(Forbidden):
        await nobody(api.REVIEW, {"spec_id": v.spec_id, "version": 1, "decision": "approve"})
    await bob(api.REVIEW, {"spec_id": v.spec_id, "version": 1, "decision": "approve"})
    for who in (alice, bob, nobody):
        with pytest.raises(Forbidden) as err:
            await who(api.PUBLISH, {"spec_id": v.spec_id, "version": 1})
        assert PUBLISHER in err.value.message
    # Anyone in the tenant may read it and give feedback.
    assert (await nobody(api.GET, {"spec_id": v.spec_id})).status == "approved"
    fb = await nobody(api.FEEDBACK, {"spec_id": v.spec_id, "version": 1, "score": "up"})
    assert fb.summary.thumbs_up == 1


async def test_publish_creates_the_agent_as_the_publisher_and_it_runs(
    alice: As, bob: As, carol: As, mock: MockOpenAI
):
    cid = await _collection(alice)
    hr = agent_spec(
        name=f"hr-{uuid.uuid4().hex[:6]}",
        system_prompt="You answer HR questions from the handbook and cite the source.",
        tools=["rag_search"],
        rag_collections=[cid],
    )
    _script(mock, json.dumps(hr))
    v = await alice(
        api.GENERATE_AGENT,
        {"prompt": "an agent that answers questions about our HR policy documents"},
    )
    await alice(api.SUBMIT, {"spec_id": v.spec_id, "version": 1})
    await bob(api.REVIEW, {"spec_id": v.spec_id, "version": 1, "decision": "approve"})
    published = await carol(api.PUBLISH, {"spec_id": v.spec_id, "version": 1})
    assert published.status == "published" and published.agent_id
    agent = await carol.raw("agent.get.request", {"agent_id": published.agent_id})
    assert agent["created_by"] == "carol"  # created as the publisher
    assert agent["tools"] == ["rag_search"] and agent["rag_collections"] == [cid]
    # Set by normalization: the collection is searched before the first model call.
    assert v.spec["retrieval"]["mode"] == "auto" and agent["retrieval"]["mode"] == "auto"
    assert any("retrieval.mode set to 'auto'" in n for n in v.generation.notes)

    mock.seen.clear()
    mock.script(
        MODEL,
        Reply(
            content=None,
            tool_calls=[
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "rag_search", "arguments": '{"query": "vacation"}'},
                }
            ],
            finish_reason="tool_calls",
        ),
        Reply(content="You get 25 vacation days per year [1]."),
    )
    run = await carol.raw(
        "agent.execute.request",
        {"agent_id": published.agent_id, "task": "How many vacation days do I get?"},
    )
    assert run["status"] == "succeeded", run.get("error")
    assert "[1]" in run["output"]
    assert run["steps"][0]["type"] == "retrieval"
    assert f"[1] handbook: {HANDBOOK}" in mock.calls(MODEL)[0].body["messages"][0]["content"]
    assert run["steps"][2]["result"]["results"][0]["text"] == HANDBOOK
    (citation,) = run["citations"]  # the retrieval and the tool call found the same passage
    assert (citation["source_id"], citation["collection_id"], citation["cited"]) == (
        "handbook",
        cid,
        True,
    )

    # Feedback on the run lands on the version that was published.
    fb = await carol(api.FEEDBACK, {"run_id": run["run_id"], "score": 4, "comment": "good"})
    assert (fb.spec_id, fb.version) == (v.spec_id, 1)
    assert fb.summary.ratings == 1 and fb.summary.mean_rating == 4.0

    # Refine → version 2 with a diff; publishing it updates the same agent.
    _script(mock, json.dumps({**hr, "limits": {**hr["limits"], "max_steps": 4}}))
    v2 = await alice(
        api.REFINE, {"spec_id": v.spec_id, "base_version": 1, "instruction": "at most 4 steps"}
    )
    assert v2.version == 2 and v2.base_version == 1
    assert [(d.path, d.before, d.after) for d in v2.diff or []] == [("/limits/max_steps", 8, 4)]
    await alice(api.SUBMIT, {"spec_id": v.spec_id, "version": 2})
    await bob(api.REVIEW, {"spec_id": v.spec_id, "version": 2, "decision": "approve"})
    again = await carol(api.PUBLISH, {"spec_id": v.spec_id, "version": 2})
    assert again.agent_id == published.agent_id
    agent = await carol.raw("agent.get.request", {"agent_id": published.agent_id})
    assert agent["limits"]["max_steps"] == 4 and agent["version"] == 2

    detail = await carol(api.GET, {"spec_id": v.spec_id})
    assert detail.latest_version == 2 and detail.published_version == 2
    assert [(s.version, s.status) for s in detail.versions] == [(1, "published"), (2, "published")]
    assert detail.versions[0].feedback.mean_rating == 4.0
    # Every state change is audited, newest first.
    trail = (await carol(api.AUDIT, {"spec_id": v.spec_id})).items
    assert [
        (a.action, a.version, a.from_status, a.to_status, a.actor) for a in reversed(trail)
    ] == [
        ("generate", 1, None, "draft", "alice"),
        ("submit", 1, "draft", "pending_review", "alice"),
        ("approve", 1, "pending_review", "approved", "bob"),
        ("publish", 1, "approved", "published", "carol"),
        ("feedback", 1, None, None, "carol"),
        ("refine", 2, None, "draft", "alice"),
        ("submit", 2, "draft", "pending_review", "alice"),
        ("approve", 2, "pending_review", "approved", "bob"),
        ("publish", 2, "approved", "published", "carol"),
    ]


async def test_publishing_applies_the_agent_services_own_permissions(
    alice: As, bob: As, client: Client, tenant: str, mock: MockOpenAI
):
    _script(
        mock,
        json.dumps(
            tool_spec(
                name="hr_lookup",
                implementation={"kind": "builtin", "builtin": "calculator", "arguments": {}},
            )
        ),
    )
    v = await alice(api.GENERATE_TOOL, {"prompt": "a tool that computes leave balances"})
    assert v.checks_passed, v.checks
    await alice(api.SUBMIT, {"spec_id": v.spec_id, "version": 1})
    await alice(api.REVIEW, {"spec_id": v.spec_id, "version": 1, "decision": "approve"})
    # A publisher without tools:write: the Agent Service refuses to register the tool.
    plain = As(client, tenant, "erin", PUBLISHER)
    with pytest.raises(Forbidden) as err:
        await plain(api.PUBLISH, {"spec_id": v.spec_id, "version": 1})
    assert "tools:write" in err.value.message
    assert (await plain(api.GET, {"spec_id": v.spec_id})).status == "approved"
    writer = As(client, tenant, "frank", PUBLISHER, "tools:write")
    done = await writer(api.PUBLISH, {"spec_id": v.spec_id, "version": 1})
    assert done.tool_name == "hr_lookup"
    tool = await writer.raw("agent.get_tool.request", {"name": "hr_lookup"})
    assert tool["implementation"]["builtin"] == "calculator"


async def test_a_provider_refusing_response_format_is_asked_through_a_tool_call(
    alice: As, mock: MockOpenAI
):
    call = {
        "id": "call_spec",
        "type": "function",
        "function": {"name": "save_agent_spec", "arguments": json.dumps(agent_spec())},
    }
    mock.script(
        TOOLS_MODEL,
        Reply(status=400, message="response_format is not supported by this model"),
        Reply(content=None, tool_calls=[call], finish_reason="tool_calls"),
    )
    v = await alice(api.GENERATE_AGENT, {"prompt": "a helper", "model": "pg-tools"})
    assert v.generation.mode == "tool_call" and v.checks_passed
    first, second = mock.calls(TOOLS_MODEL)
    assert "response_format" in first.body and "response_format" not in second.body
    assert second.body["tool_choice"]["function"]["name"] == "save_agent_spec"
    assert second.body["tools"][0]["function"]["parameters"]["properties"]["tools"]


async def test_tenant_b_sees_none_of_tenant_a(alice: As, client: Client, mock: MockOpenAI):
    _script(mock, json.dumps(agent_spec()))
    v = await alice(api.GENERATE_AGENT, {"prompt": "a helper"})
    await alice(api.FEEDBACK, {"spec_id": v.spec_id, "version": 1, "score": 5})
    other = As(client, f"pgb-{uuid.uuid4().hex[:8]}", "alice", AUTHOR, REVIEWER, PUBLISHER)
    with pytest.raises(NotFound):
        await other(api.GET, {"spec_id": v.spec_id})
    assert (await other(api.LIST, {})).items == []
    assert (await other(api.AUDIT, {})).items == []
    with pytest.raises(NotFound):
        await other(api.AUDIT, {"spec_id": v.spec_id})
    for op, body in (
        (api.FEEDBACK, {"spec_id": v.spec_id, "version": 1, "score": 1}),
        (api.SUBMIT, {"spec_id": v.spec_id, "version": 1}),
        (api.REVIEW, {"spec_id": v.spec_id, "version": 1, "decision": "reject"}),
        (api.PUBLISH, {"spec_id": v.spec_id, "version": 1}),
        (api.REFINE, {"spec_id": v.spec_id, "base_version": 1, "instruction": "x"}),
    ):
        with pytest.raises(NotFound):
            await other(op, body)
    mine = await alice(api.GET, {"spec_id": v.spec_id})
    assert mine.status == "draft" and mine.feedback.count == 1


async def test_refine_without_instruction_uses_the_versions_feedback(
    alice: As, client: Client, tenant: str, mock: MockOpenAI
):
    _script(mock, json.dumps(agent_spec()))
    v = await alice(api.GENERATE_AGENT, {"prompt": "a helper"})
    with pytest.raises(InvalidRequest):
        await alice(api.REFINE, {"spec_id": v.spec_id, "base_version": 1})
    user = As(client, tenant, "gina")
    await user(
        api.FEEDBACK,
        {"spec_id": v.spec_id, "version": 1, "score": 2, "comment": "answers are too long"},
    )
    _script(mock, json.dumps(agent_spec(system_prompt="You answer in one sentence.")))
    v2 = await alice(api.REFINE, {"spec_id": v.spec_id, "base_version": 1})
    assert v2.prompt and "answers are too long" in v2.prompt
    assert "answers are too long" in mock.calls(MODEL)[-1].body["messages"][-1]["content"]
    assert [d.path for d in v2.diff or []] == ["/system_prompt"]
    # Another author may not refine alice's spec.
    with pytest.raises(Forbidden):
        await As(client, tenant, "hank", AUTHOR)(
            api.REFINE, {"spec_id": v.spec_id, "base_version": 1, "instruction": "shorter"}
        )
