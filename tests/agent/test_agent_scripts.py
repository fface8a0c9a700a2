"""The scripted model's turns are OpenAI chat completions, whole and streamed."""

from __future__ import annotations

import json

from tests.fake_llm import answer, call, completion, completion_chunks


def _reassemble(chunks: list[dict]) -> dict:
    """Put streamed chunks back together as an OpenAI client does."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        choice = chunk["choices"][0]
        delta = choice["delta"]
        content += delta.get("content") or ""
        for part in delta.get("tool_calls") or []:
            slot = calls.setdefault(part["index"], {"id": None, "name": "", "arguments": ""})
            slot["id"] = part.get("id") or slot["id"]
            slot["name"] += part.get("function", {}).get("name") or ""
            slot["arguments"] += part.get("function", {}).get("arguments") or ""
        finish = choice["finish_reason"] or finish
    return {"content": content or None, "calls": calls, "finish_reason": finish}


def test_a_tool_call_turn_is_a_chat_completion_and_streams_back_to_the_same_call():
    turn = call("rag_search", {"query": "vacation days", "top_k": 3}, "call_1")
    whole = completion(turn, model="m")
    assert whole["object"] == "chat.completion" and whole["model"] == "m"
    (choice,) = whole["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (tool_call,) = choice["message"]["tool_calls"]
    assert tool_call["type"] == "function" and tool_call["id"] == "call_1"
    assert json.loads(tool_call["function"]["arguments"]) == {"query": "vacation days", "top_k": 3}
    again = _reassemble(completion_chunks(turn))
    assert again["calls"] == {
        0: {"id": "call_1", "name": "rag_search", "arguments": tool_call["function"]["arguments"]}
    }
    assert again["finish_reason"] == "tool_calls" and again["content"] is None


def test_an_answer_turn_streams_back_to_the_same_text():
    turn = answer("You get 25 vacation days [doc-vacation].")
    assert completion(turn)["choices"][0]["message"]["content"] == turn["message"]["content"]
    again = _reassemble(completion_chunks(turn))
    assert again == {
        "content": "You get 25 vacation days [doc-vacation].",
        "calls": {},
        "finish_reason": "stop",
    }
