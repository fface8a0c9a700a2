"""Agents, declarative tools and tenant settings: CRUD, pagination, concurrency, roles."""

from __future__ import annotations

import pytest

from bus.errors import Conflict, Forbidden, InvalidRequest, NotFound
from tests.agent_env import Api

pytestmark = pytest.mark.usefixtures("agent_worker")

WRITER = ("tools:write",)


async def test_create_fills_defaults_and_get_reads_it_back(api: Api):
    created = await api(
        "create",
        {
            "name": "helper",
            "description": "helps",
            "system_prompt": "You help.",
            "capabilities": {"languages": ["en"]},
            "tools": ["calculator"],
            "rag_collections": ["kb"],
        },
    )
    assert created["agent_id"].startswith("agt-")
    assert created["llm_model"] == "local-chat" and created["status"] == "active"
    assert created["version"] == 1 and created["created_by"] == "alice"
    assert created["limits"]["max_steps"] == 8
    assert await api("get", {"agent_id": created["agent_id"]}) == created


async def test_list_pages_with_a_cursor_newest_first(api: Api):
    ids = [(await api.agent(name=f"a{i}"))["agent_id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        page = await api("list", {"limit": 2, **({"cursor": cursor} if cursor else {})})
        seen += [a["agent_id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_list_filters_by_status_and_name_and_hides_archived(api: Api):
    await api.agent(name="support bot")
    idle = await api.agent(name="sales bot", status="inactive")
    gone = await api.agent(name="old bot")
    await api("delete", {"agent_id": gone["agent_id"]})
    names = lambda page: sorted(a["name"] for a in page["items"])  # noqa: E731
    assert names(await api("list", {})) == ["sales bot", "support bot"]
    assert names(await api("list", {"status": "inactive"})) == [idle["name"]]
    assert names(await api("list", {"search": "SUP"})) == ["support bot"]
    assert names(await api("list", {"search": "%"})) == []  # a wildcard is a character
    assert names(await api("list", {"status": "archived"})) == ["old bot"]
    assert names(await api("list", {"include_archived": True})) == [
        "old bot",
        "sales bot",
        "support bot",
    ]


async def test_update_changes_only_given_fields_and_bumps_the_version(api: Api):
    agent = await api.agent(description="before")
    updated = await api(
        "update", {"agent_id": agent["agent_id"], "version": 1, "system_prompt": "Be brief."}
    )
    assert updated["version"] == 2 and updated["system_prompt"] == "Be brief."
    assert updated["description"] == "before"


async def test_update_with_a_stale_version_is_a_conflict(api: Api):
    agent = await api.agent()
    await api("update", {"agent_id": agent["agent_id"], "version": 1, "description": "x"})
    with pytest.raises(Conflict) as err:
        await api("update", {"agent_id": agent["agent_id"], "version": 1, "description": "y"})
    assert err.value.details == {"version": 2}
    assert (await api("get", {"agent_id": agent["agent_id"]}))["description"] == "x"


async def test_names_are_unique_among_live_agents(api: Api):
    first = await api.agent(name="dup")
    with pytest.raises(Conflict):
        await api.agent(name="dup")
    await api("delete", {"agent_id": first["agent_id"]})
    assert (await api.agent(name="dup"))["name"] == "dup"


async def test_delete_archives_and_hard_delete_removes(api: Api):
    agent = await api.agent()
    out = await api("delete", {"agent_id": agent["agent_id"]})
    assert out == {"agent_id": agent["agent_id"], "status": "archived"}
    assert (await api("get", {"agent_id": agent["agent_id"]}))["status"] == "archived"
    out = await api("delete", {"agent_id": agent["agent_id"], "hard": True})
    assert out["status"] == "deleted"
    with pytest.raises(NotFound):
        await api("get", {"agent_id": agent["agent_id"]})


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": ["no_such_tool"]},
        {"tools": ["calculator"], "approval_required": ["http_get"]},
        {"limits": {"max_steps": 0}},
        {"parameters": {"temperature": 5}},
        {"name": ""},
    ],
)
async def test_invalid_agents_are_refused(api: Api, fields):
    with pytest.raises(InvalidRequest):
        await api.agent(**fields)


async def test_http_get_needs_its_role_to_be_attached(api: Api):
    with pytest.raises(Forbidden):
        await api.agent(tools=["http_get"])
    agent = await api.as_(roles=("tools:http",)).agent(tools=["http_get"])
    # Editing other fields of an agent whose tools one may not attach is still allowed.
    out = await api("update", {"agent_id": agent["agent_id"], "version": 1, "description": "d"})
    assert out["tools"] == ["http_get"]


TOOL = {
    "name": "yearly",
    "description": "Twelve times a monthly amount.",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
    "implementation": {"kind": "builtin", "builtin": "calculator"},
}


async def test_registering_tools_needs_the_tools_write_role(api: Api):
    with pytest.raises(Forbidden):
        await api("create_tool", TOOL)
    created = await api.as_(roles=WRITER)("create_tool", TOOL)
    assert created["tool_id"].startswith("tool-") and created["builtin"] is False
    listed = {t["name"]: t for t in (await api("list_tools", {}))["items"]}
    assert {"rag_search", "calculator", "http_get", "memory_write", "yearly"} <= set(listed)
    assert listed["http_get"]["required_roles"] == ["tools:http"]
    assert (await api("get_tool", {"name": "yearly"}))["description"] == TOOL["description"]


@pytest.mark.parametrize(
    "change",
    [
        {"name": "calculator"},  # shadows a built-in
        {"parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}},
        {"parameters": {"type": "string"}},
        {
            "implementation": {
                "kind": "builtin",
                "builtin": "calculator",
                "arguments": {"code": "1"},
            }
        },
        {"implementation": {"kind": "python", "source": "import os"}},
    ],
)
async def test_unusable_tool_declarations_are_refused(api: Api, change):
    with pytest.raises(InvalidRequest):
        await api.as_(roles=WRITER)("create_tool", {**TOOL, **change})


async def test_tool_update_uses_versions_and_delete_refuses_attached_tools(api: Api):
    writer = api.as_(roles=WRITER)
    await writer("create_tool", TOOL)
    updated = await writer(
        "update_tool", {"name": "yearly", "version": 1, "requires_approval": True}
    )
    assert updated["version"] == 2 and updated["requires_approval"] is True
    with pytest.raises(Conflict):
        await writer("update_tool", {"name": "yearly", "version": 1, "description": "stale"})
    agent = await api.agent(tools=["yearly"])
    with pytest.raises(Conflict):
        await writer("delete_tool", {"name": "yearly"})
    await api("delete", {"agent_id": agent["agent_id"]})
    assert await writer("delete_tool", {"name": "yearly"}) == {"deleted": True}


async def test_settings_allow_list_needs_the_role_and_refuses_internal_hosts(api: Api):
    with pytest.raises(Forbidden):
        await api("update_settings", {"http_allowlist": ["docs.example.com"]})
    writer = api.as_(roles=WRITER)
    for bad in ("169.254.169.254", "localhost", "metadata.google.internal", "10.0.0.1"):
        with pytest.raises(InvalidRequest):
            await writer("update_settings", {"http_allowlist": [bad]})
    saved = await writer(
        "update_settings", {"http_allowlist": ["Docs.Example.com", "*.example.org"]}
    )
    assert saved["http_allowlist"] == ["docs.example.com", "*.example.org"]
    assert (await api("get_settings", {}))["http_allowlist"] == saved["http_allowlist"]
    with pytest.raises(Conflict):
        await writer("update_settings", {"http_allowlist": [], "version": saved["version"] - 1})
