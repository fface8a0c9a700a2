"""OpenAI wire shapes <-> gateway contracts (pure functions, no servers)."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from schemas.gateway import (
    AssistantMessage,
    Delta,
    EmbedResponse,
    FunctionCall,
    FunctionCallDelta,
    GenerateChunk,
    GenerateResponse,
    ModelInfo,
    ModelsResponse,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from schemas.openai_compat import (
    SSE_DONE,
    OpenAIRequestError,
    chat_chunks,
    chat_completion,
    chat_request,
    embeddings_request,
    embeddings_response,
    error_body,
    models_list,
    sse,
)

HI = [{"role": "user", "content": "hi"}]


def test_chat_request_maps_parameters():
    call = chat_request(
        {
            "model": "fast",
            "messages": HI,
            "temperature": 0,
            "max_completion_tokens": 12,
            "stop": "END",
            "seed": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "ignored",
            "n": 1,
        }
    )
    req = call.request
    assert (req.model, req.temperature, req.max_tokens, req.stop, req.seed) == (
        "fast",
        0,
        12,
        "END",
        1,
    )
    assert call.stream and call.include_usage


def test_chat_request_without_model_uses_the_default():
    assert chat_request({"model": "", "messages": HI}).request.model is None


def test_chat_request_drops_echoed_null_message_keys():
    echoed = {"role": "assistant", "content": "x", "refusal": None, "annotations": []}
    req = chat_request({"model": "m", "messages": [*HI, echoed]}).request
    assert req.messages[1].content == "x"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": HI, "api_base": "http://x"}, "api_base"),
        ({"model": "m", "messages": HI, "logit_bias": {"1": 2}}, "logit_bias"),
        ({"model": "m", "messages": HI, "n": 2}, "n"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": HI, "temperature": 9}, "temperature"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x", "api_key": "k"}]},
            "messages",
        ),
    ],
)
def test_chat_request_refuses_what_the_gateway_cannot_honour(body, param):
    with pytest.raises(OpenAIRequestError) as caught:
        chat_request(body)
    assert caught.value.param == param


def test_chat_completion_shape():
    resp = GenerateResponse(
        model="fast",
        message=AssistantMessage(
            content=None,
            tool_calls=[ToolCall(id="c1", function=FunctionCall(name="f", arguments="{}"))],
        ),
        finish_reason="tool_calls",
        usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
        cost=0.1,
    )
    out = chat_completion(resp, completion_id="chatcmpl-1", created=7)
    assert out["object"] == "chat.completion" and out["model"] == "fast"
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0] == {
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_chat_chunks_first_delta_last_and_usage():
    common = {"completion_id": "c", "created": 1, "model": "fast", "include_usage": True}
    first = chat_chunks(GenerateChunk(delta=Delta(content="He")), first=True, **common)
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": "He"}
    assert first[0]["usage"] is None
    tool = GenerateChunk(
        delta=Delta(
            tool_calls=[ToolCallDelta(index=0, id="t", function=FunctionCallDelta(name="f"))]
        )
    )
    (mid,) = chat_chunks(tool, first=False, **common)
    assert mid["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "t", "function": {"name": "f"}}
    ]
    last = GenerateChunk(
        finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    )
    finish, usage = chat_chunks(last, first=False, **common)
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "finish_reason": "stop",
        "logprobs": None,
    }
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 3


def test_chat_chunks_without_include_usage_has_no_usage_chunk():
    last = GenerateChunk(finish_reason="length", usage=Usage())
    out = chat_chunks(
        last, completion_id="c", created=1, model="m", first=False, include_usage=False
    )
    assert len(out) == 1 and "usage" not in out[0]


def test_embeddings_request_and_base64_response():
    call = embeddings_request({"model": "e", "input": "one", "encoding_format": "base64"})
    assert call.request.texts == ["one"] and call.encoding_format == "base64"
    resp = EmbedResponse(
        model="e", vectors=[[0.5, -1.0]], usage=Usage(prompt_tokens=1, total_tokens=1)
    )
    out = embeddings_response(resp, "base64")
    raw = base64.b64decode(out["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -1.0)
    assert embeddings_response(resp)["data"][0]["embedding"] == [0.5, -1.0]


def test_embeddings_request_refuses_token_arrays():
    with pytest.raises(OpenAIRequestError):
        embeddings_request({"model": "e", "input": [[1, 2, 3]]})


def test_models_list_and_errors_and_sse():
    models = ModelsResponse(models=[ModelInfo(alias="fast", provider="openai", mode="chat")])
    assert models_list(models)["data"][0] == {
        "id": "fast",
        "object": "model",
        "created": 0,
        "owned_by": "openai",
    }
    body = error_body("rate_limited", "slow down")
    assert body["error"]["type"] == "rate_limit_error"
    assert json.loads(sse(body)[len(b"data: ") :]) == body
    assert SSE_DONE == b"data: [DONE]\n\n"
