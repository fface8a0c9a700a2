"""A scripted stand-in for the Gateway, RAG and Prompt services, answering over real NATS.

Generation is scripted per test: a queue of assistant turns, each shaped exactly like
one ``choices[0]`` of an OpenAI chat completion (``message`` with ``content`` and/or
``tool_calls``, ``finish_reason``, optional ``usage``), plus an optional ``delay`` the
fake waits before answering. :func:`completion` and :func:`completion_chunks` turn a
turn into the OpenAI ``chat.completion`` / ``chat.completion.chunk`` JSON, so the same
scripts can be served by a scripted OpenAI-compatible HTTP server behind the real
gateway.

Embeddings are a deterministic hashed bag of words (384 dimensions, normalised), token
counts are word counts, RAG search ranks per-tenant documents by word overlap, and
prompts are ``{{variable}}`` templates. Every request is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from bus.errors import NotFound, Unavailable, UpstreamError
from bus.worker import Endpoint, Worker
from schemas import gateway, prompt, rag
from schemas.context import Context
from schemas.gateway import CountTokensRequest, EmbedRequest, GenerateRequest
from schemas.prompt import PromptRenderRequest
from schemas.rag import SearchRequest

DIMENSIONS = 384
_WORD = re.compile(r"\w+")

Turn = dict[str, Any]


class Raw(BaseModel):
    """Any JSON object as a reply (the runtime answers with ``model_dump()``)."""

    model_config = ConfigDict(extra="allow")


def call(name: str, arguments: dict[str, Any], call_id: str | None = None) -> Turn:
    """A turn in which the model calls one tool."""
    return calls((name, arguments, call_id))


def calls(*items: tuple[str, dict[str, Any], str | None]) -> Turn:
    """A turn in which the model calls several tools at once."""
    return {
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id or _call_id(name, i, args),
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(args)},
                }
                for i, (name, args, call_id) in enumerate(items)
            ],
        },
        "finish_reason": "tool_calls",
    }


def _call_id(name: str, index: int, args: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps([name, index, args], sort_keys=True).encode()).hexdigest()
    return f"call_{digest[:12]}"


def answer(text: str, **extra: Any) -> Turn:
    """A turn in which the model answers with text."""
    return {"message": {"role": "assistant", "content": text}, "finish_reason": "stop", **extra}


def words(text: str | None) -> int:
    return len(_WORD.findall(text or ""))


def _usage(turn: Turn, request: GenerateRequest) -> dict[str, int]:
    if "usage" in turn:
        return dict(turn["usage"])
    prompt = sum(words(m.content) for m in request.messages)
    message = turn["message"]
    completion = words(message.get("content")) + sum(
        words(c["function"]["arguments"]) for c in message.get("tool_calls") or []
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion(turn: Turn, model: str = "scripted", usage: dict[str, int] | None = None) -> dict:
    """The OpenAI ``chat.completion`` object for one scripted turn."""
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": turn["message"], "finish_reason": turn["finish_reason"]}
        ],
        "usage": usage or turn.get("usage") or {},
    }


def completion_chunks(turn: Turn, model: str = "scripted") -> list[dict]:
    """The OpenAI ``chat.completion.chunk`` objects streaming one scripted turn."""
    message = turn["message"]
    deltas: list[dict[str, Any]] = [{"role": "assistant"}]
    content = message.get("content") or ""
    deltas += [{"content": piece} for piece in re.findall(r"\S+\s*|\s+", content)]
    for i, tc in enumerate(message.get("tool_calls") or []):
        args = tc["function"]["arguments"]
        half = len(args) // 2
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": i,
                        "id": tc["id"],
                        "type": "function",
                        "function": {"name": tc["function"]["name"], "arguments": args[:half]},
                    }
                ]
            }
        )
        deltas.append({"tool_calls": [{"index": i, "function": {"arguments": args[half:]}}]})
    chunks = [
        {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": d, "finish_reason": None}],
        }
        for d in deltas
    ]
    chunks[-1]["choices"][0]["finish_reason"] = turn["finish_reason"]
    return chunks


def embed(text: str) -> list[float]:
    """Hashed bag of words: each word adds ±1 to one of 384 dimensions; then normalised."""
    vector = [0.0] * DIMENSIONS
    for word in _WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big")
        vector[h % DIMENSIONS] += 1.0 if (h >> 32) & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:
        vector[0], norm = 1.0, 1.0
    return [x / norm for x in vector]


@dataclass
class Document:
    document_id: str
    text: str
    source_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class FakeLLM:
    """The scripted services; ``reset()`` between tests."""

    def __init__(self, gateway: str = "gateway", rag: str = "rag", prompt: str = "prompt") -> None:
        self.names = (gateway, rag, prompt)
        self.reset()

    def reset(self) -> None:
        self.script: list[Turn] = []
        self.repeat_last = False
        self.requests: list[GenerateRequest] = []
        self.streamed: list[bool] = []
        self.contexts: list[Context] = []
        self.embedded: list[str] = []
        self.counted: list[list[str]] = []
        self.count_tokens_down = False
        self.search_fails = False
        """Searches answer ``upstream_error`` (not retryable, so no circuit opens)."""
        self.searches: list[tuple[str | None, SearchRequest]] = []
        self.documents: dict[tuple[str, str], list[Document]] = {}
        self.templates: dict[tuple[str, str], str] = {}

    # --- what a test sets up ---------------------------------------------------------

    def play(self, *turns: Turn, repeat_last: bool = False) -> None:
        """Queue the model's next turns; with ``repeat_last`` the last one never runs out."""
        self.script = list(turns)
        self.repeat_last = repeat_last

    def collection(self, tenant: str, collection_id: str, *docs: Document) -> None:
        self.documents[(tenant, collection_id)] = list(docs)

    def template(self, tenant: str, name: str, text: str) -> None:
        self.templates[(tenant, name)] = text

    # --- the services ----------------------------------------------------------------

    def _next(self) -> Turn:
        if not self.script:
            raise UpstreamError("the scripted model has no turn left")
        if len(self.script) == 1 and self.repeat_last:
            return self.script[0]
        return self.script.pop(0)

    async def generate(self, req: GenerateRequest, ctx: Context) -> Raw:
        self.requests.append(req)
        self.streamed.append(False)
        self.contexts.append(ctx)
        turn = self._next()
        await asyncio.sleep(turn.get("delay", 0))
        return Raw(
            model=req.model or "local-chat",
            message=turn["message"],
            finish_reason=turn["finish_reason"],
            usage=_usage(turn, req),
            cost=0.0,
        )

    async def stream(self, req: GenerateRequest, ctx: Context) -> AsyncIterator[Raw]:
        self.requests.append(req)
        self.streamed.append(True)
        self.contexts.append(ctx)
        turn = self._next()
        await asyncio.sleep(turn.get("delay", 0))
        chunks = completion_chunks(turn, req.model or "local-chat")
        for i, chunk in enumerate(chunks):
            choice = chunk["choices"][0]
            out: dict[str, Any] = {"delta": choice["delta"], "model": chunk["model"]}
            if i == len(chunks) - 1:
                out["finish_reason"] = choice["finish_reason"]
                out["usage"] = _usage(turn, req)
            yield Raw(**out)

    async def embed(self, req: EmbedRequest, ctx: Context) -> Raw:
        self.embedded.extend(req.texts)
        return Raw(
            model=req.model or "local-embed",
            vectors=[embed(t) for t in req.texts],
            usage={"prompt_tokens": sum(words(t) for t in req.texts)},
        )

    async def count_tokens(self, req: CountTokensRequest, ctx: Context) -> Raw:
        if self.count_tokens_down:
            raise Unavailable("token counting is down")
        texts = list(req.texts or []) + [m.content or "" for m in req.messages or []]
        self.counted.append(texts)
        counts = [words(t) for t in texts]
        return Raw(model=req.model or "local-chat", total=sum(counts), counts=counts)

    async def search(self, req: SearchRequest, ctx: Context) -> Raw:
        self.searches.append((ctx.tenant, req))
        if self.search_fails:
            raise UpstreamError("the search failed")
        query = set(_WORD.findall(req.query.lower()))
        scored = []
        for cid in req.collection_ids:
            docs = self.documents.get((str(ctx.tenant), cid))
            if docs is None:
                raise NotFound(f"collection {cid} not found")
            for doc in docs:
                overlap = len(query & set(_WORD.findall(doc.text.lower())))
                scored.append((overlap / max(len(query), 1), doc))
        scored.sort(key=lambda pair: -pair[0])
        return Raw(
            results=[
                {
                    "document_id": doc.document_id,
                    "source_id": doc.source_id or doc.document_id,
                    "chunk_id": f"{doc.document_id}#0",
                    "score": score,
                    "text": doc.text,
                    "metadata": doc.metadata or {},
                }
                for score, doc in scored[: req.top_k or 5]
            ]
        )

    async def render(self, req: PromptRenderRequest, ctx: Context) -> Raw:
        template = self.templates.get((str(ctx.tenant), req.name))
        if template is None:
            raise NotFound(f"prompt {req.name} not found")
        text = re.sub(
            r"\{\{\s*(\w+)\s*\}\}", lambda m: str(req.variables.get(m.group(1), "")), template
        )
        return Raw(name=req.name, version=1, type="text", text=text)

    def workers(self) -> list[Worker]:
        gw, rg, pr = self.names
        return [
            Worker(
                gw,
                endpoints=[
                    Endpoint(gateway.GENERATE.served_as(gw), self.generate),
                    Endpoint(gateway.STREAM.served_as(gw), self.stream),
                    Endpoint(gateway.EMBED.served_as(gw), self.embed),
                    Endpoint(gateway.COUNT_TOKENS.served_as(gw), self.count_tokens),
                ],
            ),
            Worker(rg, endpoints=[Endpoint(rag.SEARCH.served_as(rg), self.search)]),
            Worker(pr, endpoints=[Endpoint(prompt.RENDER.served_as(pr), self.render)]),
        ]
