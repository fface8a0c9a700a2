"""Chat threads with history, context-window trimming, streaming replies, and memory."""

from __future__ import annotations

import pytest

from bus.errors import NotFound, PayloadTooLarge
from tests.agent_env import Api
from tests.fake_llm import answer, call, words
from workers.agent.history import PER_MESSAGE_TOKENS, REPLY_PRIMING_TOKENS, estimate

pytestmark = pytest.mark.usefixtures("agent_worker")


def _seen(request) -> list[tuple[str, str | None]]:
    return [(m.role, m.content) for m in request.messages]


async def test_chat_keeps_the_thread_history_and_stores_each_reply(api: Api, fake):
    agent = await api.agent()
    fake.play(answer("Hello Alice!"))
    first = await api("chat", {"agent_id": agent["agent_id"], "message": "Hi, I am Alice."})
    assert first["reply"] == "Hello Alice!" and first["status"] == "succeeded"
    fake.play(answer("Your name is Alice."))
    second = await api(
        "chat",
        {"agent_id": agent["agent_id"], "thread_id": first["thread_id"], "message": "My name?"},
    )
    assert second["thread_id"] == first["thread_id"] and second["reply"] == "Your name is Alice."
    assert _seen(fake.requests[1])[1:] == [
        ("user", "Hi, I am Alice."),
        ("assistant", "Hello Alice!"),
        ("user", "My name?"),
    ]
    thread = await api("get_thread", {"thread_id": first["thread_id"]})
    assert [(m["role"], m["content"], m["run_id"]) for m in thread["messages"]] == [
        ("user", "Hi, I am Alice.", first["run_id"]),
        ("assistant", "Hello Alice!", first["run_id"]),
        ("user", "My name?", second["run_id"]),
        ("assistant", "Your name is Alice.", second["run_id"]),
    ]
    runs = await api("list_runs", {"agent_id": agent["agent_id"], "thread_id": first["thread_id"]})
    assert {r["run_id"] for r in runs["items"]} == {first["run_id"], second["run_id"]}
    threads = await api("list_threads", {"agent_id": agent["agent_id"]})
    assert [t["thread_id"] for t in threads["items"]] == [first["thread_id"]]


async def _long_thread(api: Api, fake, agent_id: str, turns: int) -> str:
    thread_id = None
    for i in range(turns):
        fake.play(answer(f"reply {i}"))
        body = {"agent_id": agent_id, "message": f"message {i} " + "word " * 40}
        if thread_id:
            body["thread_id"] = thread_id
        thread_id = (await api("chat", body))["thread_id"]
    return thread_id


async def test_history_beyond_the_window_is_trimmed_oldest_first(api: Api, fake):
    window, reserve = 400, 50
    agent = await api.agent(limits={"context_window": window}, parameters={"max_tokens": reserve})
    thread_id = await _long_thread(api, fake, agent["agent_id"], 6)
    fake.play(answer("ok"))
    out = await api(
        "chat", {"agent_id": agent["agent_id"], "thread_id": thread_id, "message": "last one"}
    )
    assert out["trimmed_messages"] > 0
    seen = _seen(fake.requests[-1])
    assert seen[0][0] == "system" and seen[-1] == ("user", "last one")
    # The newest turns stay, the oldest go, and the whole fits the window by the count.
    assert ("assistant", "reply 5") in seen and not any("message 0 " in (c or "") for _, c in seen)
    used = sum(words(c) + PER_MESSAGE_TOKENS for _, c in seen) + REPLY_PRIMING_TOKENS
    assert used + reserve <= window
    assert len(seen) == 2 + 12 - out["trimmed_messages"]


async def test_trimming_falls_back_to_a_conservative_estimate(api: Api, fake):
    window, reserve = 600, 50
    agent = await api.agent(limits={"context_window": window}, parameters={"max_tokens": reserve})
    thread_id = await _long_thread(api, fake, agent["agent_id"], 4)
    fake.count_tokens_down = True
    fake.play(answer("ok"))
    out = await api(
        "chat", {"agent_id": agent["agent_id"], "thread_id": thread_id, "message": "and now?"}
    )
    assert out["status"] == "succeeded" and out["trimmed_messages"] > 0
    seen = _seen(fake.requests[-1])
    used = sum(estimate(c or "") + PER_MESSAGE_TOKENS for _, c in seen) + REPLY_PRIMING_TOKENS
    assert used + reserve <= window


async def test_a_message_that_cannot_fit_the_window_is_refused_and_not_stored(api: Api, fake):
    agent = await api.agent(limits={"context_window": 300}, parameters={"max_tokens": 50})
    fake.play(answer("hello"))
    first = await api("chat", {"agent_id": agent["agent_id"], "message": "hi"})
    with pytest.raises(PayloadTooLarge):
        await api(
            "chat",
            {
                "agent_id": agent["agent_id"],
                "thread_id": first["thread_id"],
                "message": "word " * 2000,
            },
        )
    assert len(fake.requests) == 1
    thread = await api("get_thread", {"thread_id": first["thread_id"]})
    assert [m["content"] for m in thread["messages"]] == ["hi", "hello"]


async def test_chat_stream_yields_tokens_then_the_stored_reply(api: Api, fake):
    agent = await api.agent()
    fake.play(answer("Streaming works fine."))
    events = await api.stream("chat_stream", {"agent_id": agent["agent_id"], "message": "hi"})
    assert events[0]["event"] == "run" and events[0]["thread_id"]
    assert "".join(e["delta"] for e in events if e["event"] == "token") == "Streaming works fine."
    assert (
        events[-1]["event"] == "done" and events[-1]["result"]["output"] == "Streaming works fine."
    )
    thread = await api("get_thread", {"thread_id": events[0]["thread_id"]})
    assert thread["messages"][-1]["content"] == "Streaming works fine."


async def test_another_users_thread_is_invisible(api: Api, fake):
    agent = await api.agent()
    fake.play(answer("hi"))
    mine = await api("chat", {"agent_id": agent["agent_id"], "message": "private"})
    bob = api.as_(user="bob")
    with pytest.raises(NotFound):
        await bob("get_thread", {"thread_id": mine["thread_id"]})
    with pytest.raises(NotFound):
        await bob(
            "chat", {"agent_id": agent["agent_id"], "thread_id": mine["thread_id"], "message": "x"}
        )
    with pytest.raises(NotFound):
        await bob("get_run", {"run_id": mine["run_id"]})
    assert (await bob("list_threads", {"agent_id": agent["agent_id"]}))["items"] == []
    admin = api.as_(user="root", roles=("agent:admin",))
    assert (await admin("get_thread", {"thread_id": mine["thread_id"]}))["user"] == "alice"


async def test_memory_items_can_be_added_listed_searched_and_deleted(api: Api, fake):
    agent = await api.agent()
    aid = agent["agent_id"]
    tea = await api(
        "add_memory", {"agent_id": aid, "text": "Alice drinks green tea", "metadata": {"k": 1}}
    )
    await api("add_memory", {"agent_id": aid, "text": "The office is in Berlin"})
    assert tea["memory_id"].startswith("mem-") and tea["source"] == "api"
    listed = await api("list_memories", {"agent_id": aid})
    assert [m["text"] for m in listed["items"]] == [
        "The office is in Berlin",
        "Alice drinks green tea",
    ]
    found = await api(
        "search_memories", {"agent_id": aid, "query": "what tea does alice drink", "top_k": 1}
    )
    assert [m["text"] for m in found["items"]] == ["Alice drinks green tea"]
    assert found["items"][0]["score"] > 0
    assert await api("delete_memory", {"agent_id": aid, "memory_id": tea["memory_id"]}) == {
        "deleted": True
    }
    assert [m["text"] for m in (await api("list_memories", {"agent_id": aid}))["items"]] == [
        "The office is in Berlin"
    ]


async def test_runs_write_memory_that_later_runs_find(api: Api, fake):
    agent = await api.agent(tools=["memory_write", "memory_search"])
    fake.play(call("memory_write", {"text": "Alice's favourite colour is teal"}), answer("Saved."))
    await api("chat", {"agent_id": agent["agent_id"], "message": "My favourite colour is teal."})
    fake.play(call("memory_search", {"query": "favourite colour"}), answer("Teal."))
    out = await api(
        "chat", {"agent_id": agent["agent_id"], "message": "What is my favourite colour?"}
    )
    assert out["reply"] == "Teal."
    run = await api("get_run", {"run_id": out["run_id"]})
    items = run["steps"][1]["result"]["items"]
    assert items[0]["text"] == "Alice's favourite colour is teal"
    stored = (await api("list_memories", {"agent_id": agent["agent_id"]}))["items"]
    assert stored[0]["source"] == "run" and stored[0]["run_id"]


async def test_memory_recall_puts_the_closest_items_into_the_system_message(api: Api, fake):
    agent = await api.agent(memory={"recall": True, "recall_top_k": 1})
    await api("add_memory", {"agent_id": agent["agent_id"], "text": "Alice is vegetarian"})
    await api("add_memory", {"agent_id": agent["agent_id"], "text": "The printer is on floor 3"})
    fake.play(answer("Try the veggie lasagne."))
    await api("execute", {"agent_id": agent["agent_id"], "task": "Is Alice vegetarian? Dinner?"})
    system = fake.requests[0].messages[0].content
    assert "Alice is vegetarian" in system and "printer" not in system
