"""A TEST-ONLY stand-in for the Gateway Service, answering over real NATS.

It speaks the gateway's contract (``gateway.{embed,generate,count_tokens}.request``, shapes
in ``schemas.gateway``) so RAG is tested through the bus exactly as it will call the real
gateway; swapping the real one in changes no RAG code.

* Embeddings are real text features, deterministic across processes: hashed bag of words
  plus character trigrams (signed feature hashing) in 384 dimensions, L2-normalised, so
  texts that share words or word pieces are closer. Not a language model: it knows no
  synonyms, which is what the hybrid-search tests rely on.
* Generation quotes the first sentence of passage ``[1]`` of the prompt and cites it.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field

from bus.worker import Endpoint, Worker
from schemas import gateway
from schemas.context import Context
from schemas.gateway import (
    AssistantMessage,
    CountTokensRequest,
    CountTokensResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    Usage,
)

DIMENSIONS = 384
_WORD = re.compile(r"\w+")
_PASSAGE_ONE = re.compile(
    r"^\[1\][^\n]*\n(.+?)(?:\n\n\[\d+\]|\n\nQuestion:|\Z)", re.DOTALL | re.MULTILINE
)
_SENTENCE = re.compile(r".+?(?:[.!?](?=\s)|$)", re.DOTALL)


def _bucket(feature: str) -> tuple[int, float]:
    h = zlib.crc32(feature.encode())
    return h % DIMENSIONS, (1.0 if (h >> 16) & 1 else -1.0)


def embed_text(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    vec = [0.0] * dimensions
    for word in (w.lower() for w in _WORD.findall(text)):
        i, sign = _bucket("w:" + word)
        vec[i % dimensions] += sign
        padded = f"<{word}>"
        for k in range(len(padded) - 2):
            i, sign = _bucket("t:" + padded[k : k + 3])
            vec[i % dimensions] += 0.35 * sign
    norm = math.sqrt(sum(x * x for x in vec))
    if norm == 0:
        vec[0] = 1.0
        return vec
    return [x / norm for x in vec]


def quote_first_passage(prompt: str) -> str:
    m = _PASSAGE_ONE.search(prompt)
    if not m:
        return "I do not know."
    passage = m.group(1).strip()
    first = _SENTENCE.match(passage)
    sentence = (first.group(0) if first else passage).strip()
    return f"According to the documents: {sentence} [1]"


@dataclass
class FakeGateway:
    embedded_texts: int = 0
    embed_calls: int = 0
    generate_calls: int = 0
    prompts: list[str] = field(default_factory=list)

    async def embed(self, req: EmbedRequest, ctx: Context) -> EmbedResponse:
        self.embed_calls += 1
        self.embedded_texts += len(req.texts)
        vectors = [embed_text(t, req.dimensions or DIMENSIONS) for t in req.texts]
        tokens = sum(len(_WORD.findall(t)) for t in req.texts)
        return EmbedResponse(
            model=req.model or "local-embed",
            vectors=vectors,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        )

    async def generate(self, req: GenerateRequest, ctx: Context) -> GenerateResponse:
        self.generate_calls += 1
        prompt = "\n\n".join(m.content or "" for m in req.messages)
        self.prompts.append(prompt)
        answer = quote_first_passage(prompt)
        used = len(_WORD.findall(prompt))
        out = len(_WORD.findall(answer))
        return GenerateResponse(
            model=req.model or "local-chat",
            message=AssistantMessage(content=answer),
            finish_reason="stop",
            usage=Usage(prompt_tokens=used, completion_tokens=out, total_tokens=used + out),
            cost=0.0,
        )

    async def count_tokens(self, req: CountTokensRequest, ctx: Context) -> CountTokensResponse:
        items = req.texts if req.texts is not None else [m.content for m in req.messages or []]
        counts = [len(_WORD.findall(t)) for t in items]
        return CountTokensResponse(
            model=req.model or "local-chat", total=sum(counts), counts=counts
        )

    def worker(self) -> Worker:
        return Worker(
            "gateway",
            endpoints=[
                Endpoint(gateway.EMBED, self.embed),
                Endpoint(gateway.GENERATE, self.generate),
                Endpoint(gateway.COUNT_TOKENS, self.count_tokens),
            ],
            description="TEST-ONLY fake gateway",
        )
