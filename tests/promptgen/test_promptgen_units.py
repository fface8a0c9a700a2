"""Prompt Generator units without infrastructure: generation schema, validation, checks,
secrets, hosts, diff, and the generate → validate → repair loop with a callable model."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from bus.errors import InvalidRequest
from schemas.agent import AgentCreateRequest, ToolCreateRequest
from schemas.gateway import (
    AssistantMessage,
    FunctionCall,
    GenerateRequest,
    GenerateResponse,
    ToolCall,
    Usage,
)
from schemas.promptgen import Check
from tests.promptgen_support import agent_spec, as_json, catalogue, tool_spec
from workers.promptgen import checks, hosts, leaks, specschema
from workers.promptgen.diff import diff
from workers.promptgen.generator import Generator
from workers.promptgen.settings import PromptgenConfig

CONFIG = PromptgenConfig()
CAT = catalogue()


def _instances(schema: dict[str, Any]) -> list[Any]:
    """A few documents valid under ``schema``: every enum value and branch, each once."""
    if "anyOf" in schema:
        return [i for branch in schema["anyOf"] for i in _instances(branch)]
    if "enum" in schema:
        return list(schema["enum"])
    t = schema.get("type")
    if t == "null":
        return [None]
    if t == "boolean":
        return [True, False]
    if t == "string":
        return ["abc"] if "pattern" not in schema else ["a_b"]
    if t == "integer":
        return [3]
    if t == "array":
        items = _instances(schema["items"]) if schema.get("maxItems", 1) else []
        return [[], items[: schema.get("maxItems", len(items))]] if items else [[]]
    if t == "object":
        props = schema.get("properties") or {}
        if not props:
            return [{}]
        options = {k: _instances(v) for k, v in props.items()}
        width = max(len(v) for v in options.values())
        return [{k: v[i % len(v)] for k, v in options.items()} for i in range(width)]
    return [{}]


@pytest.mark.parametrize("kind", ["agent", "tool"])
def test_every_document_of_the_generation_schema_is_a_valid_spec(kind):
    schema = specschema.generation_schema(kind, CAT, CONFIG)
    jsonschema.Draft202012Validator.check_schema(schema)
    docs = _instances(schema)
    assert len(docs) >= 5
    model = AgentCreateRequest if kind == "agent" else ToolCreateRequest
    for doc in docs:
        jsonschema.validate(doc, schema)
        model.model_validate(doc)


def test_generation_schema_names_only_what_the_tenant_has():
    schema = specschema.agent_schema(CAT, CONFIG)
    props = schema["properties"]
    assert props["tools"]["items"]["enum"] == sorted(CAT.tools)
    assert props["rag_collections"]["items"]["enum"] == ["col-hr", "col-it"]
    assert max(props["limits"]["properties"]["max_steps"]["enum"]) == CONFIG.max_steps
    assert "capabilities" not in props
    assert specschema.is_strict(schema)
    # Tool bodies carry maps (argument schemas): outside OpenAI's strict subset.
    assert not specschema.is_strict(specschema.tool_schema(CAT, CONFIG))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "one JSON object"),
        ('{"name": "x"}', "system_prompt"),
        (as_json(agent_spec(tools=["bad name!"])), "tools.0"),
        (as_json(agent_spec(limits={"max_steps": 1000})), "limits.max_steps"),
        ("x" * 40_000, "longer than"),
    ],
)
def test_an_unusable_answer_gets_errors_to_send_back(text, error):
    parsed = specschema.parse("agent", text, CAT, CONFIG.max_answer_chars)
    assert parsed.spec is None
    assert any(error in e for e in parsed.errors), parsed.errors


def test_a_fenced_answer_is_read():
    parsed = specschema.parse("agent", "```json\n" + as_json(agent_spec()) + "\n```", CAT, 9999)
    assert parsed.errors == [] and parsed.spec and parsed.spec["name"] == "helper"


def test_tool_rules_of_create_tool_apply():
    bad = tool_spec(
        name="http_get",
        implementation={"kind": "builtin", "builtin": "calculator", "arguments": {"url": "x"}},
    )
    parsed = specschema.parse("tool", as_json(bad), CAT, 9999)
    assert any("built-in tool" in e for e in parsed.errors)
    assert any("takes no argument" in e for e in parsed.errors)
    bad_schema = tool_spec(parameters={"type": "object", "properties": {"q": {"type": 5}}})
    assert any(
        "JSON Schema" in e for e in specschema.parse("tool", as_json(bad_schema), CAT, 9999).errors
    )


# --- secrets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "use sk-proj-abcdefghijklmnopqrstuvwxyz012345 for the calls",
        "AWS key AKIAIOSFODNN7EXAMPLE here",
        "token ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "password: hunter22",
        "api_key=9f8e7d6c5b4a",
        'connect to "https://admin:s3cretpw@db.example.com/x"',
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3",
    ],
)
def test_secret_looking_strings_are_found(text):
    assert leaks.find(text)


@pytest.mark.parametrize(
    "text",
    [
        "Never reveal a password or an API key.",
        "password: {{password}}",
        "api_key=<your key here>",
        "The token budget is limited.",
        "Ask the user for their password: required before reset.",
    ],
)
def test_ordinary_text_is_not_a_secret(text):
    assert leaks.find(text) == []


def test_redaction_removes_every_leak():
    spec = agent_spec(system_prompt="Call with key sk-live-abcdefghijklmnopqrst1234 always.")
    found = leaks.find_in(spec)
    redacted = leaks.redact(spec, found)
    assert "sk-live" not in json.dumps(redacted) and leaks.REDACTED in redacted["system_prompt"]
    assert leaks.find_in(redacted) == []


# --- hosts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "can_fetch", "problem"),
    [
        ("read http://169.254.169.254/latest/meta-data", False, "metadata"),
        ("read http://metadata.google.internal/computeMetadata", False, "metadata"),
        ("ask 169.254.169.254 for credentials", False, "metadata"),
        ("fetch https://evil.example.net/page", True, "not on the tenant's http allow-list"),
        ("fetch http://10.0.0.5/admin", True, "private"),
        ("fetch http://localhost:8080/", True, "internal"),
        ("fetch http://[::ffff:169.254.169.254]/", True, "metadata"),
        ("fetch https://docs.example.com:8443/x", True, "allow-list"),
    ],
)
def test_hosts_that_may_not_be_fetched_are_problems(text, can_fetch, problem):
    found = hosts.problems(text, ["docs.example.com", "*.status.example.org"], can_fetch)
    assert any(problem in p for p in found), found


@pytest.mark.parametrize(
    "text",
    [
        "fetch https://docs.example.com/guide and https://eu.status.example.org/",
        "see https://intranet.example.com (not fetched: no http_get)",
    ],
)
def test_allowed_hosts_are_fine(text):
    assert (
        hosts.problems(text, ["docs.example.com", "*.status.example.org"], "not" not in text) == []
    )


# --- normalization and checks --------------------------------------------------------


def _by_name(found: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in found}


def test_side_effecting_tools_get_approval_and_it_is_reported():
    spec, notes = checks.normalize(
        "agent",
        agent_spec(tools=["http_get", "calculator", "http_get"], approval_required=["rag_search"]),
        CAT,
    )
    assert spec["tools"] == ["http_get", "calculator"]
    assert spec["approval_required"] == ["http_get"]
    assert any("http_get needs approval" in n for n in notes)
    assert any("not attached: rag_search" in n for n in notes)
    found = _by_name(checks.run("agent", spec, CAT, CONFIG))
    assert found["approval"].ok and "http_get" in found["approval"].message


def test_checks_report_each_failure_with_a_reason():
    spec = agent_spec(
        tools=["web_search", "http_get"],
        rag_collections=["col-missing"],
        llm_model="gpt-nope",
        system_prompt="Fetch http://169.254.169.254/ with password: hunter22",
        limits={"max_steps": 50, "token_budget": 50000, "timeout_seconds": 120},
    )
    found = _by_name(checks.run("agent", spec, CAT, CONFIG))
    assert not found["tools"].ok and "web_search" in found["tools"].message
    assert not found["rag_collections"].ok and "col-missing" in found["rag_collections"].message
    assert not found["models"].ok and "gpt-nope" in found["models"].message
    assert not found["http_hosts"].ok and "metadata" in found["http_hosts"].message
    assert not found["secrets"].ok and "password" in found["secrets"].message
    assert not found["limits"].ok and "max_steps 50" in found["limits"].message
    assert not found["approval"].ok and "http_get" in found["approval"].message
    assert found["schema"].ok


def test_an_agent_with_tools_needs_a_step_to_answer():
    one = agent_spec(tools=["rag_search"], limits={"max_steps": 1})
    found = _by_name(checks.run("agent", one, CAT, CONFIG))
    assert not found["limits"].ok and "no step to answer" in found["limits"].message
    plain = agent_spec(tools=[], limits={"max_steps": 1})
    assert _by_name(checks.run("agent", plain, CAT, CONFIG))["limits"].ok
    compact = specschema.compact_agent_schema(catalogue(), CONFIG)
    assert min(compact["properties"]["limits"]["properties"]["max_steps"]["enum"]) == 2


def test_http_get_without_an_allow_list_fails():
    found = _by_name(
        checks.run(
            "agent",
            agent_spec(tools=["http_get"], approval_required=["http_get"]),
            catalogue(allowlist=()),
            CONFIG,
        )
    )
    assert not found["http_hosts"].ok and "allow-list is empty" in found["http_hosts"].message


def test_a_tool_spec_on_http_get_with_a_metadata_url_fails():
    spec = tool_spec(
        name="instance_info",
        implementation={
            "kind": "builtin",
            "builtin": "http_get",
            "arguments": {"url": "http://169.254.169.254/latest/meta-data/iam"},
        },
    )
    spec, _ = checks.normalize("tool", spec, CAT)
    assert spec["requires_approval"] is True
    found = _by_name(checks.run("tool", spec, CAT, CONFIG))
    assert not found["http_hosts"].ok and "metadata" in found["http_hosts"].message


def test_a_missing_service_fails_its_checks_instead_of_passing():
    from dataclasses import replace

    cat = replace(CAT, unknown=frozenset({"collections"}))
    found = _by_name(checks.run("agent", agent_spec(rag_collections=["col-hr"]), cat, CONFIG))
    assert (
        not found["rag_collections"].ok and "could not verify" in found["rag_collections"].message
    )


def test_diff_reports_fields_by_pointer():
    a = agent_spec()
    b = agent_spec(name="hr", tools=["rag_search"], limits={**a["limits"], "max_steps": 4})
    del b["memory"]
    changes = {c.path: c for c in diff(a, b)}
    assert changes["/name"].before == "helper" and changes["/name"].after == "hr"
    assert changes["/tools"].op == "changed" and changes["/tools"].after == ["rag_search"]
    assert changes["/limits/max_steps"].after == 4
    assert changes["/memory"].op == "removed"
    assert len(changes) == 4


# --- the loop ------------------------------------------------------------------------


class Scripted:
    """A model as a function: answers from a list; records the requests."""

    def __init__(self, *answers: str | Exception | ToolCall) -> None:
        self.answers = list(answers)
        self.seen: list[GenerateRequest] = []

    async def __call__(self, req: GenerateRequest) -> GenerateResponse:
        self.seen.append(req)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        message = (
            AssistantMessage(content=None, tool_calls=[answer])
            if isinstance(answer, ToolCall)
            else AssistantMessage(content=answer)
        )
        return GenerateResponse(
            model=req.model or "m", message=message, finish_reason="stop", usage=Usage(), cost=0
        )


def _review(kind: str = "agent"):
    def review(spec: dict[str, Any]):
        spec, notes = checks.normalize(kind, spec, CAT)  # type: ignore[arg-type]
        return spec, notes, checks.run(kind, spec, CAT, CONFIG)  # type: ignore[arg-type]

    return review


async def _run(model: Scripted, kind: str = "agent", config: PromptgenConfig = CONFIG):
    messages = [{"role": "user", "content": "an HR agent"}]
    return await Generator(model, config).run(kind, messages, CAT, "m", _review(kind))  # type: ignore[arg-type]


async def test_a_valid_first_answer_takes_one_call():
    model = Scripted(as_json(agent_spec(tools=["rag_search"], rag_collections=["col-hr"])))
    out = await _run(model)
    assert out.spec is not None and out.generation.attempts == 1 and out.generation.valid_first_try
    assert all(c.ok for c in out.checks)
    fmt = model.seen[0].response_format
    assert fmt is not None and fmt.type == "json_schema" and fmt.json_schema.strict is True  # type: ignore[union-attr]


async def test_invalid_json_is_repaired_with_the_errors_sent_back():
    model = Scripted("{oops", as_json(agent_spec()))
    out = await _run(model)
    assert out.spec is not None and out.generation.attempts == 2
    assert not out.generation.valid_first_try
    repair = model.seen[1].messages[-1]
    assert repair.role == "user" and "not valid JSON" in str(repair.content)
    assert model.seen[1].messages[-2].role == "assistant"


async def test_a_missing_tool_is_sent_back_as_a_check_failure():
    model = Scripted(as_json(agent_spec(tools=["web_search"])), as_json(agent_spec()))
    out = await _run(model)
    assert out.generation.attempts == 2 and out.generation.valid_first_try
    assert "web_search" in str(model.seen[1].messages[-1].content)
    assert all(c.ok for c in out.checks)


async def test_after_two_repairs_the_best_valid_answer_is_kept_with_its_failures():
    model = Scripted(as_json(agent_spec(tools=["web_search"])), "nope")
    out = await _run(model)
    assert out.generation.attempts == 3 and len(model.seen) == 3
    assert out.spec is not None and not _by_name(out.checks)["tools"].ok


async def test_no_valid_answer_gives_no_spec():
    out = await _run(Scripted('{"wrong": "shape"}'))
    assert out.spec is None and out.generation.attempts == 3
    assert any("system_prompt" in e for e in out.generation.errors)


async def test_a_model_refusing_response_format_is_asked_through_a_tool_call():
    call = ToolCall(
        id="call_1", function=FunctionCall(name="save_agent_spec", arguments=as_json(agent_spec()))
    )
    model = Scripted(InvalidRequest("response_format is not supported"), call)
    out = await _run(model)
    assert out.spec is not None and out.generation.mode == "tool_call"
    second = model.seen[1]
    assert second.response_format is None and second.tools is not None
    assert second.tools[0].function.name == "save_agent_spec"
    assert second.tools[0].function.parameters == specschema.agent_schema(CAT, CONFIG)
    assert any("tool call" in n for n in out.generation.notes)


async def test_tool_call_models_are_repaired_through_tool_messages():
    bad = ToolCall(id="c1", function=FunctionCall(name="save_agent_spec", arguments="{"))
    good = ToolCall(
        id="c2", function=FunctionCall(name="save_agent_spec", arguments=as_json(agent_spec()))
    )
    model = Scripted(bad, good)
    out = await _run(model, config=PromptgenConfig(tool_call_models=["m"]))
    assert out.spec is not None and out.generation.attempts == 2
    tool_msg = model.seen[1].messages[-1]
    assert tool_msg.role == "tool" and tool_msg.tool_call_id == "c1"


def test_hostile_near_misses_are_not_secrets():
    # Inputs that make backtracking engines slow (many starts, long runs, no match): the
    # scan splits into tokens and matches each at its start only, and finds nothing here.
    hostile = ["eyJa-" * 2000, "sk-ab " * 5000, "password" + " " * 3 + ":" * 5000]
    assert [leaks.find(text) for text in hostile] == [[], [], []]


def test_strings_of_walks_keys_and_values():
    assert sorted(leaks.strings_of({"a": ["b", {"c": "d"}], "n": 1})) == ["a", "b", "c", "d", "n"]


async def test_a_repair_the_model_cannot_take_ends_with_the_best_answer_so_far():
    model = Scripted(
        as_json(agent_spec(tools=["web_search"])), InvalidRequest("context window exceeded")
    )
    out = await _run(model)
    assert out.spec is not None and out.generation.attempts == 1
    assert any("repair round refused" in e for e in out.generation.errors)
    assert not _by_name(out.checks)["tools"].ok


async def test_a_first_call_refused_for_a_tool_call_model_is_the_callers_error():
    model = Scripted(InvalidRequest("prompt too long"))
    with pytest.raises(InvalidRequest):
        await _run(model, config=PromptgenConfig(tool_call_models=["m"]))


# ---------------------------------------------------------------- the compact schema


def _bounded(schema: Any, path: str = "") -> list[str]:
    """Free strings without maxLength and arrays without maxItems, by path."""
    out: list[str] = []
    if isinstance(schema, dict):
        if schema.get("type") == "string" and "enum" not in schema:
            pattern = schema.get("pattern", "")
            if "maxLength" not in schema and not (
                pattern and "*" not in pattern and "+" not in pattern
            ):
                out.append(path or "(root)")
        if schema.get("type") == "array" and "maxItems" not in schema:
            out.append(path or "(root)")
        if schema.get("type") == "object" and schema.get("additionalProperties") not in (
            None,
            False,
        ):
            out.append(f"{path} (open map)")
        for key, sub in (schema.get("properties") or {}).items():
            out += _bounded(sub, f"{path}/{key}")
        for i, sub in enumerate(schema.get("anyOf") or []):
            out += _bounded(sub, f"{path}|{i}")
        if isinstance(schema.get("items"), dict):
            out += _bounded(schema["items"], f"{path}[]")
    return out


@pytest.mark.parametrize("kind", ["agent", "tool"])
def test_the_compact_schema_bounds_every_string_and_list(kind):
    # A grammar built from it closes every string and list: a repeating small model
    # cannot run an answer past max_tokens.
    schema = specschema.generation_schema(kind, CAT, CONFIG, compact=True)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert _bounded(schema) == []
    assert _bounded(specschema.generation_schema(kind, CAT, CONFIG))  # the full one is not


@pytest.mark.parametrize("kind", ["agent", "tool"])
def test_every_completed_document_of_the_compact_schema_is_a_valid_spec(kind):
    schema = specschema.generation_schema(kind, CAT, CONFIG, compact=True)
    base = {"description": "an HR agent"} if kind == "agent" else {}
    fill = specschema.completer(kind, CAT, base)  # type: ignore[arg-type]
    docs = _instances(schema)
    assert len(docs) >= 5
    for doc in docs:
        jsonschema.validate(doc, schema)
        parsed = specschema.parse(kind, json.dumps(doc), CAT, 9999, fill)  # type: ignore[arg-type]
        assert parsed.errors == [], (doc, parsed.errors)


def test_a_compact_tool_gets_the_builtins_free_arguments_as_parameters():
    fill = specschema.completer("tool", CAT, {})
    impl = {"kind": "builtin", "builtin": "rag_search", "arguments": {"collection_ids": ["col-hr"]}}
    spec = fill({"name": "rag_search", "description": "Search HR.", "implementation": impl})
    assert spec["name"] == "rag_search_tool"  # a built-in's name is not free
    params = spec["parameters"]
    assert set(params["properties"]) == {"query", "top_k", "mode"}  # collection_ids is fixed
    assert params["required"] == ["query"]
    llm = fill(
        {
            "name": "sum",
            "description": "d",
            "implementation": {"kind": "llm", "prompt": {"name": "summarize"}},
        }
    )
    assert llm["parameters"]["additionalProperties"] == {"type": "string"}
    for s in (spec, llm):
        assert specschema.parse("tool", json.dumps(s), CAT, 9999).errors == []


def test_a_compact_refinement_keeps_what_the_model_did_not_write():
    base = agent_spec(
        description="HR answers",
        approval_required=[],
        limits={"max_steps": 8, "token_budget": 20_000, "timeout_seconds": 60},
        memory={"recall": True, "recall_top_k": 2},
    )
    fill = specschema.completer("agent", CAT, base)
    out = fill(
        {
            "name": "hr",
            "system_prompt": "You answer.",
            "tools": [],
            "rag_collections": [],
            "limits": {"max_steps": 3},
        }
    )
    assert out["limits"] == {"max_steps": 3, "token_budget": 20_000, "timeout_seconds": 60}
    assert out["memory"] == {"recall": True, "recall_top_k": 2}
    assert out["description"] == "HR answers" and out["name"] == "hr"


async def test_a_compact_model_is_asked_for_the_compact_schema_and_completed():
    answer = {
        "name": "hr helper",
        "system_prompt": "You answer HR questions.",
        "tools": [],
        "rag_collections": ["col-hr"],
        "limits": {"max_steps": 5},
    }
    model = Scripted(json.dumps(answer))
    config = PromptgenConfig(compact_models=["m"])
    messages = [{"role": "user", "content": "an HR agent"}]
    out = await Generator(model, config).run(
        "agent", messages, CAT, "m", _review(), base={"description": "an HR agent"}
    )
    fmt = model.seen[0].response_format
    assert fmt is not None and fmt.json_schema is not None
    assert fmt.json_schema.schema_ == specschema.compact_agent_schema(CAT, config)
    assert out.spec is not None and out.generation.valid_first_try
    assert out.spec["description"] == "an HR agent"
    assert out.spec["tools"] == ["rag_search"] and out.spec["rag_collections"] == ["col-hr"]
    assert out.spec["limits"]["max_steps"] == 5 and out.spec["limits"]["token_budget"] == 50_000
    assert any("compact schema" in n for n in out.generation.notes)
    assert all(c.ok for c in out.checks)


def test_collections_and_tools_the_request_names_are_granted_and_reported():
    cat = catalogue(
        collections={"col-hr": "HR policy documents", "col-it": "IT handbook", "col-x": "Policies"}
    )
    named = checks.named_collections("answers about our HR policy document", cat)
    assert named == ["col-hr", "col-x"]  # a one-word name is named by that word
    assert checks.named_collections("questions about the IT handbooks", cat) == ["col-it"]
    assert checks.named_collections("an HR agent", cat) == []  # "policy" is not said
    assert checks.named_collections(None, cat) == []
    spec, notes = checks.normalize(
        "agent",
        agent_spec(tools=[], rag_collections=[]),
        cat,
        "our HR policy documents, with http_get",
    )
    assert spec["rag_collections"] == ["col-hr", "col-x"]
    assert spec["tools"] == ["rag_search", "http_get"]
    assert spec["approval_required"] == ["http_get"]
    assert any("granted: the request names it" in n for n in notes)
    assert any("http_get attached" in n for n in notes)
    # A search tool that fixes no collection gets the named ones fixed.
    tool = tool_spec(implementation={"kind": "builtin", "builtin": "rag_search", "arguments": {}})
    spec, notes = checks.normalize("tool", tool, cat, "searches the IT handbook")
    assert spec["implementation"]["arguments"] == {"collection_ids": ["col-it"]}


def test_an_agent_with_collections_gets_auto_retrieval_and_the_version_says_so():
    spec, notes = checks.normalize("agent", agent_spec(rag_collections=["col-hr"]), CAT)
    assert spec["retrieval"]["mode"] == "auto"
    assert any(n.startswith("retrieval.mode set to 'auto'") for n in notes)
    found = _by_name(checks.run("agent", spec, CAT, CONFIG))
    assert found["rag_collections"].ok
    assert "retrieval auto" in found["rag_collections"].message
    # Normalizing again changes nothing and says nothing more about it.
    again, notes = checks.normalize("agent", spec, CAT)
    assert again["retrieval"] == spec["retrieval"]
    assert not any("retrieval" in n for n in notes)
    # The rule's output is what the Agent Service accepts.
    assert specschema.parse("agent", json.dumps(spec), CAT, 99_999).errors == []


def test_an_agent_without_collections_keeps_tool_retrieval():
    spec, notes = checks.normalize("agent", agent_spec(rag_collections=[]), CAT)
    assert spec.get("retrieval", {"mode": "tool"})["mode"] == "tool"
    spec, notes = checks.normalize(
        "agent", agent_spec(rag_collections=[], retrieval={"mode": "auto", "top_k": 3}), CAT
    )
    assert spec["retrieval"] == {"mode": "tool", "top_k": 3}
    assert any("retrieval.mode set to 'tool'" in n for n in notes)


def test_a_parsed_agent_gets_auto_retrieval_from_the_rule_not_the_model():
    parsed = specschema.parse(
        "agent", json.dumps(agent_spec(rag_collections=["col-hr"])), CAT, 9999
    )
    assert parsed.spec is not None and parsed.spec["retrieval"]["mode"] == "tool"
    assert "retrieval" not in specschema.compact_agent_schema(CAT, CONFIG)["properties"]
    spec, _ = checks.normalize("agent", parsed.spec, CAT)
    assert spec["retrieval"] == {"mode": "auto", "top_k": parsed.spec["retrieval"]["top_k"]}


def test_a_compact_refinement_dropping_every_collection_drops_auto_retrieval():
    base = agent_spec(rag_collections=["col-hr"], retrieval={"mode": "auto", "top_k": 4})
    fill = specschema.completer("agent", CAT, base)
    answer = {"name": "x", "system_prompt": "You help.", "tools": [], "rag_collections": []}
    parsed = specschema.parse("agent", json.dumps(answer), CAT, 9999, fill)
    assert parsed.errors == [] and parsed.spec is not None
    assert parsed.spec["retrieval"]["mode"] == "tool"
    kept = specschema.parse(
        "agent", json.dumps({**answer, "rag_collections": ["col-hr"]}), CAT, 9999, fill
    )
    assert kept.spec is not None and kept.spec["retrieval"]["mode"] == "auto"


def test_the_local_provider_constrains_schema_answers_with_a_grammar_and_a_repeat_penalty():
    from workers.gateway.local import GRAMMAR_REPEAT_PENALTY, LocalGenerator

    schema = specschema.generation_schema("agent", CAT, CONFIG, compact=True)
    fmt = {"type": "json_schema", "json_schema": {"name": "agent_spec", "schema": schema}}
    msgs = [{"role": "user", "content": "an HR agent"}]
    kw = LocalGenerator._args(msgs, {"response_format": fmt, "temperature": 0})
    assert kw["response_format"] == {"type": "json_object", "schema": schema}
    assert kw["repeat_penalty"] == GRAMMAR_REPEAT_PENALTY
    # A caller's own penalty wins; free text keeps llama.cpp's default (no penalty).
    mine = LocalGenerator._args(msgs, {"response_format": fmt, "frequency_penalty": 0.3})
    assert "repeat_penalty" not in mine and mine["frequency_penalty"] == 0.3
    assert "repeat_penalty" not in LocalGenerator._args(msgs, {})
