"""Token counts as the model behind an alias sees them.

Local models count with their real tokenizers (SmolLM2's from its GGUF vocabulary, MiniLM's
``tokenizer.json``), which is cheap: no weights are loaded. Every other model counts with
``litellm.token_counter`` for its underlying model (tiktoken for OpenAI models, litellm's
bundled default otherwise: never a tokenizer downloaded at run time). Only configured
aliases are counted.

For messages, ``counts[i]`` is message *i* with its chat framing (what dropping it would
save), and ``total`` is the whole prompt as sent, including framing that belongs to no
message (a template's default system prompt, the reply priming): it may exceed the sum.
"""

from __future__ import annotations

import asyncio
from typing import Any

import litellm

from workers.gateway import local
from workers.gateway.config import Deployment

# Never fetch a tokenizer at run time: for some model names (llama, cohere, deepseek…)
# litellm.token_counter downloads one from the Hugging Face hub, inline. With this set it
# counts those with its bundled tiktoken encoding (an estimate) instead.
litellm.disable_hf_tokenizer_download = True

#: Inputs larger than this (characters) are counted off the event loop.
INLINE_CHARS = 20_000


async def count(
    deployment: Deployment, messages: list[dict[str, Any]] | None, texts: list[str] | None
) -> tuple[int, list[int]]:
    size = sum(len(str(m.get("content") or "")) for m in messages or []) + sum(
        len(t) for t in texts or []
    )
    if size <= INLINE_CHARS:
        return _count(deployment, messages, texts)
    return await asyncio.to_thread(_count, deployment, messages, texts)


def _count(
    deployment: Deployment, messages: list[dict[str, Any]] | None, texts: list[str] | None
) -> tuple[int, list[int]]:
    if deployment.local:
        return _count_local(deployment.model.split("/", 1)[1], messages, texts)
    model = deployment.model
    if texts is not None:
        counts = [litellm.token_counter(model=model, text=t) if t else 0 for t in texts]
        return sum(counts), counts
    assert messages is not None
    base = litellm.token_counter(model=model, messages=[])
    counts = [max(0, litellm.token_counter(model=model, messages=[m]) - base) for m in messages]
    return litellm.token_counter(model=model, messages=messages), counts


def _count_local(
    name: str, messages: list[dict[str, Any]] | None, texts: list[str] | None
) -> tuple[int, list[int]]:
    tokenizer = local.register().tokenizer(name)
    if isinstance(tokenizer, local.LocalTokenizer) and messages is not None:
        return tokenizer.count_messages(messages)
    items = texts if texts is not None else [str(m.get("content") or "") for m in messages or []]
    counts = (
        tokenizer.count(items)
        if isinstance(tokenizer, local.LocalEmbedder)
        else tokenizer.count_texts(items)
    )
    return sum(counts), counts
