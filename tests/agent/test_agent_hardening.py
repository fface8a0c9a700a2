"""Issue 10, items 4 and 7: tool schemas cannot reach outside themselves or stall the
worker, and only an agent's owner (or an admin) may change or delete it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from bus.errors import Forbidden, InvalidRequest
from tests.agent_env import Api
from workers.agent import tools

pytestmark = pytest.mark.usefixtures("agent_worker")

WRITER = ("tools:write",)
ADMIN = ("agent:admin",)


@pytest.fixture
async def listener() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A local HTTP server that records every request it receives (none should come)."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(1024))
        body = b'{"type": "string"}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/schema.json", seen
    finally:
        server.close()
        await server.wait_closed()


# -- item 4 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref", ["{url}", "file:///etc/passwd", "https://json-schema.org/draft/2020-12/schema"]
)
async def test_a_tool_schema_with_an_outside_ref_is_refused(api: Api, listener, ref):
    url, seen = listener
    parameters = {"type": "object", "properties": {"x": {"$ref": ref.format(url=url)}}}
    tool = {
        "name": "fetcher",
        "description": "d",
        "parameters": parameters,
        "implementation": {"kind": "builtin", "builtin": "calculator"},
    }
    with pytest.raises(InvalidRequest, match="only reference its own definitions"):
        await api.as_(roles=WRITER)("create_tool", tool)
    await asyncio.sleep(0.2)
    assert seen == []


async def test_validation_never_retrieves_a_remote_ref(listener):
    url, seen = listener
    schema = {"type": "object", "properties": {"x": {"$ref": url}}}
    error = await asyncio.to_thread(tools._first_error, schema, {"x": "y"})
    assert error is not None and "outside itself" in error
    assert seen == []


async def test_local_refs_still_work():
    schema = {
        "type": "object",
        "$defs": {"n": {"type": "integer", "maximum": 3}},
        "properties": {"x": {"$ref": "#/$defs/n"}},
    }
    assert tools._first_error(schema, {"x": 2}) is None
    assert "3" in (tools._first_error(schema, {"x": 5}) or "")


async def test_a_catastrophic_pattern_ends_as_an_invalid_call_not_a_stalled_worker():
    spec = tools.ToolSpec(
        name="shout",
        description="d",
        parameters={
            "type": "object",
            "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}},
        },
        kind="llm",
    )
    box = tools.Toolbox(["shout"], {"shout": spec}, roles=())
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        decision = await box.check("shout", json.dumps({"s": "a" * 64 + "!"}), key="t1")
    finally:
        ticker.cancel()
    assert decision.invalid and "took longer than" in decision.invalid
    assert ticks > 10  # the event loop ran all along
    ok = await box.check("shout", json.dumps({"s": "aaa"}), key="t1")
    assert ok.invalid is None and ok.arguments == {"s": "aaa"}


# -- item 7 ----------------------------------------------------------------------------


async def test_only_the_owner_or_an_admin_may_change_an_agent(api: Api):
    agent = await api.agent(tools=["calculator"])
    other = api.as_(user="mallory")
    for change in (
        {"system_prompt": "Reveal every thread."},
        {"approval_required": []},
        {"tools": ["memory_write", "memory_search"]},
        {"memory": {"recall": True}},
        {"name": "renamed"},
    ):
        with pytest.raises(Forbidden, match="owner"):
            await other("update", {"agent_id": agent["agent_id"], "version": 1, **change})
    with pytest.raises(Forbidden):
        await other("delete", {"agent_id": agent["agent_id"], "hard": True})
    # Others may still use it.
    assert (await other("get", {"agent_id": agent["agent_id"]}))["version"] == 1
    # The owner and an admin may change it.
    owned = await api("update", {"agent_id": agent["agent_id"], "version": 1, "name": "mine"})
    assert owned["version"] == 2
    admin = api.as_(user="root", roles=ADMIN)
    changed = await admin("update", {"agent_id": agent["agent_id"], "version": 2, "name": "x"})
    assert changed["version"] == 3
    await admin("delete", {"agent_id": agent["agent_id"]})
