"""The litellm calls and the shapes in and out of them.

Every provider setting comes from the deployment (configuration); the request adds only
the sampling and output parameters of its schema. litellm's own retries are off: the
dispatcher retries, with the deadline in mind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import litellm

from schemas.gateway import (
    AssistantMessage,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    GenerateRequest,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from workers.gateway.config import Deployment
from workers.gateway.errors import MalformedAnswer

litellm.suppress_debug_info = True  # else it print()s a banner on every error
litellm.telemetry = False


def messages_of(req: GenerateRequest) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True, by_alias=True) for m in req.messages]


def params_of(req: GenerateRequest) -> dict[str, Any]:
    """The request's model parameters, as litellm (OpenAI) names them."""
    out: dict[str, Any] = {}
    for name in ("temperature", "top_p", "max_tokens", "stop", "seed"):
        value = getattr(req, name)
        if value is not None:
            out[name] = value
    if req.tools:
        out["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
    if req.tool_choice is not None:
        choice = req.tool_choice
        out["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
    if req.response_format is not None:
        out["response_format"] = req.response_format.model_dump(exclude_none=True, by_alias=True)
    return out


def _call_kwargs(deployment: Deployment, timeout: float) -> dict[str, Any]:
    return {
        **deployment.params,
        "model": deployment.model,
        "timeout": timeout,
        "num_retries": 0,
        "max_retries": 0,
    }


async def complete(
    deployment: Deployment, messages: list[dict[str, Any]], params: dict[str, Any], timeout: float
) -> Any:
    return await litellm.acompletion(
        messages=messages, **params, **_call_kwargs(deployment, timeout)
    )


class Record(dict[str, Any]):
    """A provider's JSON object read the way litellm's response objects are: by attribute,
    a missing one being None (the fast path's answers and stream chunks)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _record(self.get(name))


def _record(value: Any) -> Any:
    if type(value) is dict:
        return Record(value)
    if type(value) is list:
        return [_record(v) for v in value]
    return value


@dataclass
class Answer:
    message: AssistantMessage
    finish_reason: str
    usage: Usage


def answer_of(response: Any) -> Answer:
    """A litellm ``ModelResponse`` as the gateway's answer; malformed ones raise."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedAnswer("the model provider answered without a choice")
    choice = choices[0]
    message = getattr(choice, "message", None)
    if message is None:
        raise MalformedAnswer("the model provider answered without a message")
    calls = [
        ToolCall(
            id=tc.id or f"call_{i}",
            function=FunctionCall(
                name=tc.function.name or "", arguments=tc.function.arguments or ""
            ),
        )
        for i, tc in enumerate(getattr(message, "tool_calls", None) or [])
    ]
    content = message.content
    if content is None and not calls:
        raise MalformedAnswer("the model provider answered with neither content nor tool calls")
    return Answer(
        message=AssistantMessage(content=content, tool_calls=calls or None),
        finish_reason=choice.finish_reason or ("tool_calls" if calls else "stop"),
        usage=usage_of(getattr(response, "usage", None)),
    )


def usage_of(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    p = int(getattr(raw, "prompt_tokens", 0) or 0)
    c = int(getattr(raw, "completion_tokens", 0) or 0)
    # litellm puts prompt-cache tokens in prompt_tokens_details (OpenAI: cached_tokens;
    # Anthropic's cache_read/cache_creation_input_tokens mapped there too) and counts them
    # inside prompt_tokens.
    details = getattr(raw, "prompt_tokens_details", None)
    read = _count(details, "cached_tokens") or _count(raw, "cache_read_input_tokens")
    write = (
        _count(details, "cache_creation_tokens")
        or _count(details, "cache_write_tokens")
        or _count(raw, "cache_creation_input_tokens")
    )
    return Usage(
        prompt_tokens=p,
        completion_tokens=c,
        total_tokens=p + c,
        cached_tokens_read=read or 0,
        cached_tokens_write=write or 0,
    )


def _count(obj: Any, name: str) -> int | None:
    value = getattr(obj, name, None) if obj is not None else None
    if value is None and isinstance(obj, dict):
        value = obj.get(name)
    return int(value) if isinstance(value, int | float) and value > 0 else None


async def open_stream(
    deployment: Deployment, messages: list[dict[str, Any]], params: dict[str, Any], timeout: float
) -> tuple[Any, AsyncIterator[Any]]:
    """Start a stream and wait for its first chunk, so failures before any output can still
    be retried or fall back."""
    stream = await litellm.acompletion(
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **params,
        **_call_kwargs(deployment, deployment.stream_timeout or timeout),
    )
    iterator = stream.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        raise MalformedAnswer("the model provider ended the stream at once") from None
    return first, iterator


@dataclass
class StreamState:
    """What a stream has said so far: for the final chunk, the event and the cache."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Usage | None = None

    def take(self, chunk: Any) -> Delta | None:
        """Record a litellm stream chunk; the delta to pass on, if it has one."""
        raw_usage = getattr(chunk, "usage", None)
        if raw_usage is not None and getattr(raw_usage, "total_tokens", None):
            self.usage = usage_of(raw_usage)
        choices = getattr(chunk, "choices", None) or []
        if not choices:
            return None
        choice = choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        delta = getattr(choice, "delta", None)
        if delta is None:
            return None
        content = getattr(delta, "content", None) or None
        calls = [self._call(tc) for tc in getattr(delta, "tool_calls", None) or []]
        if content:
            self.text.append(content)
        if not content and not calls:
            return None
        return Delta(content=content, tool_calls=calls or None)

    def _call(self, tc: Any) -> ToolCallDelta:
        index = int(getattr(tc, "index", 0) or 0)
        fn = getattr(tc, "function", None)
        name = getattr(fn, "name", None)
        arguments = getattr(fn, "arguments", None)
        acc = self.calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
        if tc.id:
            acc["id"] = tc.id
        acc["name"] += name or ""
        acc["arguments"] += arguments or ""
        return ToolCallDelta(
            index=index,
            id=tc.id,
            type="function" if tc.id else None,
            function=FunctionCallDelta(name=name, arguments=arguments) if fn else None,
        )

    def message(self) -> AssistantMessage:
        calls = [
            ToolCall(
                id=c["id"] or f"call_{i}",
                function=FunctionCall(name=c["name"], arguments=c["arguments"]),
            )
            for i, c in sorted(self.calls.items())
        ]
        return AssistantMessage(content="".join(self.text) or None, tool_calls=calls or None)


def count_usage(deployment: Deployment, messages: list[dict[str, Any]], text: str) -> Usage:
    """Usage for a stream whose provider sent none: litellm's tokenizer for the model."""
    try:
        p = litellm.token_counter(model=deployment.model, messages=messages)
        c = litellm.token_counter(model=deployment.model, text=text, count_response_tokens=True)
    except Exception:  # a tokenizer problem must not fail an answer already streamed
        return Usage()
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


async def embed(
    deployment: Deployment, texts: list[str], dimensions: int | None, timeout: float
) -> tuple[list[list[float]], Usage]:
    # litellm refuses `dimensions` for models it does not know to take it; the provider
    # is the judge (a model without it answers 400, which is invalid_request).
    extra: dict[str, Any] = (
        {"dimensions": dimensions, "allowed_openai_params": ["dimensions"]}
        if dimensions is not None
        else {}
    )
    response = await litellm.aembedding(input=texts, **extra, **_call_kwargs(deployment, timeout))
    data = getattr(response, "data", None)
    if not isinstance(data, list) or len(data) != len(texts):
        raise MalformedAnswer("the model provider answered with the wrong number of vectors")
    rows = sorted(data, key=lambda d: _get(d, "index", 0))
    vectors = [_get(d, "embedding", None) for d in rows]
    if not all(isinstance(v, list) for v in vectors):
        raise MalformedAnswer("the model provider answered without vectors")
    return vectors, usage_of(getattr(response, "usage", None))


def _get(item: Any, key: str, default: Any) -> Any:
    return item.get(key, default) if isinstance(item, dict) else getattr(item, key, default)


@dataclass
class Transcript:
    text: str
    language: str | None
    duration: float | None
    segments: list[tuple[float, float, str]]


async def transcribe(
    deployment: Deployment,
    audio: bytes,
    filename: str,
    language: str | None,
    prompt: str | None,
    timeout: float,
) -> Transcript:
    """Speech to text with segment timestamps (OpenAI's ``verbose_json``)."""
    extra: dict[str, Any] = {}
    if language:
        extra["language"] = language
    if prompt:
        extra["prompt"] = prompt
    response = await litellm.atranscription(
        file=(filename, audio),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
        **extra,
        **_call_kwargs(deployment, timeout),
    )
    text = getattr(response, "text", None)
    if not isinstance(text, str):
        raise MalformedAnswer("the model provider answered without a transcript")
    segments = []
    for seg in _get(response, "segments", None) or []:
        start, end, said = _get(seg, "start", None), _get(seg, "end", None), _get(seg, "text", "")
        if isinstance(start, (int, float)) and isinstance(end, (int, float)):
            segments.append((float(start), float(end), str(said or "")))
    duration = _get(response, "duration", None)
    language_out = _get(response, "language", None)
    return Transcript(
        text=text,
        language=str(language_out) if language_out else None,
        duration=float(duration) if isinstance(duration, (int, float)) else None,
        segments=segments,
    )
