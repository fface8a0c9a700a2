"""Prompt Service templates over NATS against real Postgres: versions, labels, conflicts,
listing, deletes, diffs and tenant isolation."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from bus.errors import Conflict, InvalidRequest, NotFound
from mesh.runner import serving
from schemas.prompt import ROUTES, PromptVersion
from tests.prompt_support import Caller
from workers.prompt.service import PromptHandlers, build_worker


@pytest.fixture(scope="module")
async def prompt_worker(env):
    # Through the registry and lifespan, as `mesh worker prompt` runs it.
    async with serving(["prompt"], env):
        yield


@pytest.fixture
def call(prompt_worker, client) -> Caller:
    return Caller(client, f"t-{uuid.uuid4().hex[:10]}")


async def create_text(call: Caller, name: str, template: str, **kw):
    return await call("create", {"name": name, "type": "text", "template": template, **kw})


async def test_create_returns_version_1_and_get_defaults_to_production(call):
    out = await create_text(call, "greet", "Hello {{ name }}!", config={"model": "gpt-x"})
    assert out["name"] == "greet" and out["version"] == 1
    uuid.UUID(out["template_id"])
    got = await call("get", {"name": "greet"}, PromptVersion)
    assert got.version == 1 and got.template == "Hello {{ name }}!"
    assert got.config == {"model": "gpt-x"}
    assert got.labels == ["production", "latest"]
    assert got.variables == ["name"]


async def test_creating_an_existing_name_is_conflict(call):
    await create_text(call, "dup", "a")
    with pytest.raises(Conflict):
        await create_text(call, "dup", "b")


async def test_variables_are_discovered_and_explicit_ones_added(call):
    template = "{% for d in docs %}{{ d }}{% endfor %} {{ user.name }} {% set x = 1 %}{{ x }}"
    await create_text(call, "vars", template, variables=["tone"])
    got = await call("get", {"name": "vars"}, PromptVersion)
    assert sorted(got.variables) == ["docs", "tone", "user"]


async def test_syntax_error_is_invalid_request_with_line(call):
    with pytest.raises(InvalidRequest) as info:
        await create_text(call, "bad", "line one\n{% if x %}never closed")
    assert "syntax" in info.value.message


async def test_empty_labels_create_an_unlabelled_draft(call):
    await create_text(call, "draft", "d", labels=[])
    with pytest.raises(NotFound) as info:
        await call("get", {"name": "draft"})
    assert "production" in info.value.message
    got = await call("get", {"name": "draft", "label": "latest"}, PromptVersion)
    assert got.version == 1 and got.labels == ["latest"]


async def test_update_adds_a_version_and_earlier_versions_never_change(call):
    await create_text(call, "imm", "v1 {{ a }}", config={"temperature": 0.1})
    out = await call(
        "update",
        {
            "name": "imm",
            "base_version": 1,
            "template": "v2 {{ b }}",
            "config": {"temperature": 0.9},
        },
    )
    assert out["version"] == 2
    v1 = await call("get", {"name": "imm", "version": 1}, PromptVersion)
    v2 = await call("get", {"name": "imm", "version": 2}, PromptVersion)
    assert (v1.template, v1.config, v1.variables) == ("v1 {{ a }}", {"temperature": 0.1}, ["a"])
    assert (v2.template, v2.config, v2.variables) == ("v2 {{ b }}", {"temperature": 0.9}, ["b"])
    # production stays on version 1 until moved; latest follows the newest save.
    assert (await call("get", {"name": "imm"}, PromptVersion)).version == 1
    assert (await call("get", {"name": "imm", "label": "latest"}, PromptVersion)).version == 2


async def test_postgres_refuses_to_modify_a_saved_version(call, settings):
    await create_text(call, "frozen", "original")
    conn = await asyncpg.connect(settings.database_url)
    try:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
            await conn.execute(
                "UPDATE prompt.versions SET template = 'tampered' WHERE tenant_id = $1",
                call.tenant,
            )
    finally:
        await conn.close()
    assert (await call("get", {"name": "frozen"}, PromptVersion)).template == "original"


async def test_update_carries_over_what_it_omits(call):
    await create_text(call, "carry", "keep {{ x }}", config={"model": "m1"}, variables=["extra"])
    await call("update", {"name": "carry", "base_version": 1, "config": {"model": "m2"}})
    v2 = await call("get", {"name": "carry", "version": 2}, PromptVersion)
    assert v2.template == "keep {{ x }}" and v2.config == {"model": "m2"}
    assert sorted(v2.variables) == ["extra", "x"]


async def test_update_can_move_labels_with_the_new_version(call):
    await create_text(call, "moving", "one")
    await call(
        "update", {"name": "moving", "base_version": 1, "template": "two", "labels": ["production"]}
    )
    got = await call("get", {"name": "moving"}, PromptVersion)
    assert got.version == 2 and got.labels == ["production", "latest"]


async def test_stale_update_is_conflict_with_the_latest_version(call):
    await create_text(call, "stale", "one")
    await call("update", {"name": "stale", "base_version": 1, "template": "two"})
    with pytest.raises(Conflict) as info:
        await call("update", {"name": "stale", "base_version": 1, "template": "lost?"})
    assert info.value.details == {"latest_version": 2}
    assert (await call("get", {"name": "stale", "label": "latest"}, PromptVersion)).version == 2


async def test_concurrent_updates_from_the_same_base_exactly_one_wins(call):
    await create_text(call, "race", "base")
    results = await asyncio.gather(
        *(
            call("update", {"name": "race", "base_version": 1, "template": f"writer {i}"})
            for i in range(6)
        ),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, dict)]
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(wins) == 1 and len(conflicts) == 5, results
    assert wins[0]["version"] == 2
    versions = await call("list_versions", {"name": "race"})
    assert [v["version"] for v in versions["items"]] == [2, 1]
    latest = await call("get", {"name": "race", "label": "latest"}, PromptVersion)
    assert latest.template == f"writer {results.index(wins[0])}"


async def test_update_of_a_text_template_with_messages_is_invalid(call):
    await create_text(call, "typed", "t")
    with pytest.raises(InvalidRequest):
        await call(
            "update",
            {"name": "typed", "base_version": 1, "messages": [{"role": "user", "content": "x"}]},
        )


async def test_set_label_moves_it_and_reports_where_it_was(call):
    await create_text(call, "lab", "one")
    await call("update", {"name": "lab", "base_version": 1, "template": "two"})
    out = await call("set_label", {"name": "lab", "label": "staging", "version": 2})
    assert out == {"name": "lab", "label": "staging", "version": 2, "previous_version": None}
    out = await call("set_label", {"name": "lab", "label": "production", "version": 2})
    assert out["previous_version"] == 1
    assert (await call("get", {"name": "lab"}, PromptVersion)).version == 2
    assert (await call("get", {"name": "lab", "label": "staging"}, PromptVersion)).version == 2
    v1 = await call("get", {"name": "lab", "version": 1}, PromptVersion)
    assert v1.labels == []


async def test_label_moves_are_atomic_under_concurrent_renders(call):
    await create_text(call, "atomic", "one")
    await call("update", {"name": "atomic", "base_version": 1, "template": "two"})
    await call("set_label", {"name": "atomic", "label": "staging", "version": 1})
    texts = {1: "one", 2: "two"}
    seen: set[int] = set()

    async def mover() -> None:
        for i in range(30):
            await call("set_label", {"name": "atomic", "label": "staging", "version": 2 - i % 2})

    async def reader() -> None:
        for _ in range(40):
            out = await call("render", {"name": "atomic", "label": "staging"})
            assert out["text"] == texts[out["version"]]
            seen.add(out["version"])

    await asyncio.gather(mover(), mover(), reader(), reader())
    versions = await call("list_versions", {"name": "atomic"})
    assert sum("staging" in v["labels"] for v in versions["items"]) == 1
    assert seen <= {1, 2}


async def test_label_on_a_missing_version_is_not_found_and_changes_nothing(call):
    await create_text(call, "nolabel", "one")
    with pytest.raises(NotFound):
        await call("set_label", {"name": "nolabel", "label": "production", "version": 7})
    assert (await call("get", {"name": "nolabel"}, PromptVersion)).version == 1


async def test_latest_cannot_be_set_by_hand(call):
    await create_text(call, "auto", "one")
    with pytest.raises(InvalidRequest):
        await call("set_label", {"name": "auto", "label": "latest", "version": 1})


async def test_unset_label_removes_it(call):
    await create_text(call, "unset", "one", labels=["production", "beta"])
    out = await call("unset_label", {"name": "unset", "label": "beta"})
    assert out == {"name": "unset", "label": "beta", "version": 1}
    with pytest.raises(NotFound):
        await call("get", {"name": "unset", "label": "beta"})
    with pytest.raises(NotFound):
        await call("unset_label", {"name": "unset", "label": "beta"})


async def test_list_pages_with_a_cursor_in_name_order(call):
    names = [f"p{i:02d}" for i in range(7)]
    for name in reversed(names):
        await create_text(call, name, name)
    seen, cursor = [], None
    while True:
        page = await call("list", {"limit": 3, **({"cursor": cursor} if cursor else {})})
        seen += [item["name"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names


async def test_list_searches_names_and_filters_by_label(call):
    await create_text(call, "support-reply", "a", labels=["production", "staging"])
    await create_text(call, "support_escalation", "b")
    await create_text(call, "sales-pitch", "c")
    found = await call("list", {"query": "support"})
    assert [i["name"] for i in found["items"]] == ["support-reply", "support_escalation"]
    # "_" is a literal, not a LIKE wildcard.
    assert [i["name"] for i in (await call("list", {"query": "t_e"}))["items"]] == [
        "support_escalation"
    ]
    staged = await call("list", {"label": "staging"})
    assert [i["name"] for i in staged["items"]] == ["support-reply"]
    assert staged["items"][0]["labels"] == {"production": 1, "staging": 1, "latest": 1}


async def test_invalid_cursor_is_invalid_request(call):
    with pytest.raises(InvalidRequest):
        await call("list", {"cursor": "%%%"})


async def test_delete_version_refuses_labelled_versions_and_numbers_are_not_reused(call):
    await create_text(call, "dv", "one")
    await call("update", {"name": "dv", "base_version": 1, "template": "two"})
    with pytest.raises(Conflict) as info:
        await call("delete_version", {"name": "dv", "version": 1})
    assert info.value.details == {"labels": ["production"]}
    out = await call("delete_version", {"name": "dv", "version": 2})
    assert out == {"name": "dv", "version": 2, "latest_version": 1}
    with pytest.raises(NotFound):
        await call("get", {"name": "dv", "version": 2})
    again = await call("update", {"name": "dv", "base_version": 1, "template": "three"})
    assert again["version"] == 3  # 2 meant "two"; it never means anything else


async def test_delete_template_removes_versions_and_labels(call):
    await create_text(call, "gone", "one")
    await call("update", {"name": "gone", "base_version": 1, "template": "two"})
    assert await call("delete", {"name": "gone"}) == {"name": "gone", "deleted_versions": 2}
    with pytest.raises(NotFound):
        await call("get", {"name": "gone"})
    with pytest.raises(NotFound):
        await call("delete", {"name": "gone"})
    assert (await create_text(call, "gone", "fresh"))["version"] == 1


async def test_diff_shows_body_config_and_variable_changes(call):
    await create_text(call, "df", "Hello {{ name }}.\nBye.", config={"model": "a", "t": 1})
    await call(
        "update",
        {
            "name": "df",
            "base_version": 1,
            "template": "Hi {{ name }} from {{ place }}.\nBye.",
            "config": {"model": "b", "top_p": 0.5},
        },
    )
    out = await call("diff", {"name": "df", "from_version": 1, "to_version": 2})
    assert out["changed"] is True
    assert "-Hello {{ name }}." in out["diff"] and "+Hi {{ name }} from {{ place }}." in out["diff"]
    assert out["variables_added"] == ["place"] and out["variables_removed"] == []
    changes = {c["key"]: c["change"] for c in out["config_changes"]}
    assert changes == {"model": "changed", "t": "removed", "top_p": "added"}
    same = await call("diff", {"name": "df", "from_version": 2, "to_version": 2})
    assert same["changed"] is False and same["diff"] == ""


async def test_chat_template_stores_and_renders_messages(call):
    messages = [
        {"role": "system", "content": "You are {{ persona }}."},
        {"role": "user", "content": "{{ question }}"},
    ]
    await call("create", {"name": "chat", "type": "chat", "messages": messages})
    got = await call("get", {"name": "chat"}, PromptVersion)
    assert [m.model_dump() for m in got.messages or []] == messages
    out = await call(
        "render", {"name": "chat", "variables": {"persona": "terse", "question": "Why?"}}
    )
    assert out["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Why?"},
    ]
    assert out["text"] is None and out["type"] == "chat"


async def test_tenant_b_can_neither_see_nor_render_tenant_a_templates(call, client):
    await create_text(call, "secret", "A's {{ x }}")
    other = Caller(client, f"t-{uuid.uuid4().hex[:10]}")
    for op, payload in [
        ("get", {"name": "secret"}),
        ("render", {"name": "secret", "variables": {"x": 1}}),
        ("update", {"name": "secret", "base_version": 1, "template": "B was here"}),
        ("set_label", {"name": "secret", "label": "staging", "version": 1}),
        ("delete", {"name": "secret"}),
        ("list_versions", {"name": "secret"}),
        ("diff", {"name": "secret", "from_version": 1, "to_version": 1}),
    ]:
        with pytest.raises(NotFound):
            await other(op, payload)
    assert (await other("list", {}))["items"] == []
    assert (await call("render", {"name": "secret", "variables": {"x": 1}}))["text"] == "A's 1"


async def test_same_name_in_two_tenants_stays_separate(call, client):
    other = Caller(client, f"t-{uuid.uuid4().hex[:10]}")
    await create_text(call, "shared-name", "from A")
    await create_text(other, "shared-name", "from B")
    await other("update", {"name": "shared-name", "base_version": 1, "template": "B2"})
    assert (await call("render", {"name": "shared-name"}))["text"] == "from A"
    assert (await other("render", {"name": "shared-name", "label": "latest"}))["text"] == "B2"
    versions = await call("list_versions", {"name": "shared-name"})
    assert [v["version"] for v in versions["items"]] == [1]


def test_routes_cover_every_endpoint_under_api_v1_prompts():
    worker = build_worker(PromptHandlers(None, None, None))  # type: ignore[arg-type]
    endpoints = {ep.op.subject: ep for ep in worker.endpoints}
    assert {r.subject for r in ROUTES} == set(endpoints)
    for route in ROUTES:
        assert route.path.startswith("/api/v1/prompts")
        assert route.request is endpoints[route.subject].request
        assert route.idempotent == endpoints[route.subject].idempotent
