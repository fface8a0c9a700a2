"""OpenAI wire shapes <-> gateway contracts, for the bridge's OpenAI-compatible routes.

Pure functions, no I/O: the bridge calls them around its NATS requests.

``POST /v1/chat/completions``
    ``call = chat_request(body)`` → ``gateway.generate.request`` (or ``.stream`` when
    ``call.stream``) with ``call.request`` → ``chat_completion(resp, ...)``, or for a
    stream each gateway chunk through ``chat_chunks(...)``, each dict sent as ``sse(d)``,
    then ``SSE_DONE``.
``POST /v1/embeddings``
    ``call = embeddings_request(body)`` → ``gateway.embed.request`` →
    ``embeddings_response(resp, call.encoding_format)``.
``GET /v1/models``
    ``gateway.models.request`` → ``models_list(resp, created)``.
Errors
    A body the gateway cannot take raises :class:`OpenAIRequestError` (answer 400 with
    ``error_body("invalid_request", exc.message, exc.param)``); a mesh error answers
    the error class's ``status`` with ``error_body(code, message)``; mid-stream, ``sse(
    error_body(...))`` then close, which the ``openai`` client raises as ``APIError``.

Parameters the gateway cannot honour are refused (400), never silently dropped; a few
that change nothing (``user``, ``store``, ``n: 1``, ...) are accepted and ignored.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from schemas.gateway import (
    EmbedRequest,
    EmbedResponse,
    GenerateChunk,
    GenerateRequest,
    GenerateResponse,
    ModelsResponse,
    Usage,
)

SSE_DONE = b"data: [DONE]\n\n"

# Chat parameters taken as they are (same name, same meaning).
_CHAT_SAME = (
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "tools",
    "tool_choice",
    "response_format",
    "stop",
    "seed",
    "cache",
)
# Accepted and ignored: they change nothing about the answer the gateway gives.
_CHAT_IGNORED = ("user", "metadata", "store", "service_tier", "parallel_tool_calls")
# Message keys the openai client echoes back from earlier answers (null or empty).
_MESSAGE_ECHOES = ("refusal", "annotations", "audio", "function_call")

_ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "unauthenticated": "authentication_error",
    "forbidden": "permission_error",
    "not_found": "not_found_error",
    "conflict": "invalid_request_error",
    "payload_too_large": "invalid_request_error",
    "rate_limited": "rate_limit_error",
    "internal": "api_error",
    "upstream_error": "api_error",
    "unavailable": "api_error",
    "timeout": "api_error",
}


class OpenAIRequestError(ValueError):
    """The OpenAI-shaped body cannot become a gateway request (answer 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ChatCall:
    request: GenerateRequest
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class EmbeddingsCall:
    request: EmbedRequest
    encoding_format: Literal["float", "base64"]


# ---------------------------------------------------------------- chat


def chat_request(body: Any) -> ChatCall:
    """An OpenAI chat completions body as a gateway request."""
    if not isinstance(body, dict):
        raise OpenAIRequestError("the body must be a JSON object")
    unknown = set(body) - {*_CHAT_SAME, *_CHAT_IGNORED, "model", "stream", "stream_options"}
    unknown -= {"n", "max_completion_tokens", "logprobs"}
    if unknown:
        name = sorted(unknown)[0]
        raise OpenAIRequestError(f"unsupported parameter: {name}", name)
    if body.get("n") not in (None, 1):
        raise OpenAIRequestError("only n=1 is supported", "n")
    if body.get("logprobs"):
        raise OpenAIRequestError("logprobs are not supported", "logprobs")
    payload: dict[str, Any] = {k: body[k] for k in _CHAT_SAME if body.get(k) is not None}
    if body.get("max_completion_tokens") is not None:
        payload["max_tokens"] = body["max_completion_tokens"]
    if isinstance(payload.get("messages"), list):
        payload["messages"] = [_message(m) for m in payload["messages"]]
    model = body.get("model")
    if model not in (None, "", "default"):
        payload["model"] = model
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise OpenAIRequestError("stream_options must be an object", "stream_options")
    return ChatCall(
        request=_validate(GenerateRequest, payload),
        stream=bool(body.get("stream")),
        include_usage=bool(options.get("include_usage")),
    )


def chat_completion(resp: GenerateResponse, *, completion_id: str, created: int) -> dict[str, Any]:
    """A gateway answer as an OpenAI ``chat.completion`` object."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": resp.message.content,
        "refusal": None,
    }
    if resp.message.tool_calls:
        message["tool_calls"] = [tc.model_dump() for tc in resp.message.tool_calls]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": resp.model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": resp.finish_reason, "logprobs": None}
        ],
        "usage": openai_usage(resp.usage),
        "system_fingerprint": None,
    }


def openai_usage(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object: prompt-cache reads as ``prompt_tokens_details.cached_tokens``."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens_read:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens_read}
    return out


def chat_chunks(
    chunk: GenerateChunk,
    *,
    completion_id: str,
    created: int,
    model: str,
    first: bool,
    include_usage: bool,
) -> list[dict[str, Any]]:
    """One gateway stream chunk as OpenAI ``chat.completion.chunk`` objects (in order).

    ``first`` adds ``role`` to the delta, as OpenAI's first chunk has it. The gateway's last
    chunk becomes the ``finish_reason`` chunk and, with ``include_usage``, a usage chunk.
    """
    out: list[dict[str, Any]] = []
    name = chunk.model or model

    def frame(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if include_usage:
            data["usage"] = None
        return data

    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if chunk.delta.content is not None:
        delta["content"] = chunk.delta.content
    if chunk.delta.tool_calls:
        delta["tool_calls"] = [tc.model_dump(exclude_none=True) for tc in chunk.delta.tool_calls]
    if len(delta) > (1 if first else 0) or (first and chunk.finish_reason is None):
        out.append(frame(delta, None))
        delta = {}
    if chunk.finish_reason is not None:
        out.append(frame(delta, chunk.finish_reason))
        if include_usage and chunk.usage is not None:
            out.append(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": name,
                    "choices": [],
                    "usage": openai_usage(chunk.usage),
                }
            )
    return out


# ---------------------------------------------------------------- embeddings


def embeddings_request(body: Any) -> EmbeddingsCall:
    """An OpenAI embeddings body as a gateway request (text inputs only)."""
    if not isinstance(body, dict):
        raise OpenAIRequestError("the body must be a JSON object")
    unknown = set(body) - {"input", "model", "dimensions", "encoding_format", "user"}
    if unknown:
        name = sorted(unknown)[0]
        raise OpenAIRequestError(f"unsupported parameter: {name}", name)
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise OpenAIRequestError("input must be a string or a list of strings", "input")
    fmt: Literal["float", "base64"] = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise OpenAIRequestError("encoding_format must be float or base64", "encoding_format")
    payload: dict[str, Any] = {"texts": texts}
    if body.get("model") not in (None, "", "default"):
        payload["model"] = body["model"]
    if body.get("dimensions") is not None:
        payload["dimensions"] = body["dimensions"]
    return EmbeddingsCall(request=_validate(EmbedRequest, payload), encoding_format=fmt)


def embeddings_response(
    resp: EmbedResponse, encoding_format: Literal["float", "base64"] = "float"
) -> dict[str, Any]:
    def encode(vector: list[float]) -> Any:
        if encoding_format == "float":
            return vector
        # OpenAI's base64 form: the little-endian float32 bytes of the vector.
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v)}
            for i, v in enumerate(resp.vectors)
        ],
        "model": resp.model,
        "usage": {
            "prompt_tokens": resp.usage.prompt_tokens,
            "total_tokens": resp.usage.prompt_tokens,
        },
    }


# ---------------------------------------------------------------- models, errors, SSE


def models_list(resp: ModelsResponse, created: int = 0) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": m.alias, "object": "model", "created": created, "owned_by": m.provider}
            for m in resp.models
        ],
    }


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape for a mesh error code (its status is the error class's)."""
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(code, "api_error"),
            "param": param,
            "code": code,
        }
    }


def sse(data: dict[str, Any]) -> bytes:
    """One Server-Sent Event in OpenAI's framing (``data:`` lines only)."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _message(raw: Any) -> Any:
    if not isinstance(raw, dict):
        return raw
    return {
        k: v
        for k, v in raw.items()
        if not (k in _MESSAGE_ECHOES and not v) and not (k == "tool_calls" and v == [])
    }


def _validate(model: Any, payload: dict[str, Any]) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        loc = [str(p) for p in err["loc"]]
        raise OpenAIRequestError(
            f"{'.'.join(loc) or 'body'}: {err['msg']}", loc[0] if loc else None
        ) from None
