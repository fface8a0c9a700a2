"""Every model call of RAG, over the bus: ``gateway.embed``, ``gateway.generate`` and the
Prompt Service's ``prompt.context``. Nothing here knows which model or provider answers."""

from __future__ import annotations

from typing import Any

import structlog

from bus.client import Client
from bus.context import child
from bus.errors import MeshError, UpstreamError
from schemas import gateway, prompt
from schemas.context import Context
from schemas.gateway import EmbedRequest, GenerateRequest, GenerateResponse

_log = structlog.get_logger(__name__)

#: Texts per gateway.embed call: large enough to amortise the hop, small enough that one
#: call of the local CPU embedder stays well inside a request deadline.
EMBED_BATCH = 64
#: How long to wait for the Prompt Service before building the context locally.
PROMPT_CONTEXT_TIMEOUT_S = 3.0


class Models:
    def __init__(self, client: Client, embed_batch: int = EMBED_BATCH) -> None:
        self.client = client
        self.embed_batch = embed_batch

    async def embed(self, ctx: Context, model: str, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order, embedded in batches."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.embed_batch):
            batch = texts[start : start + self.embed_batch]
            out = await self.client.call(gateway.EMBED, EmbedRequest(model=model, texts=batch), ctx)
            if len(out.vectors) != len(batch):
                raise UpstreamError(
                    f"gateway returned {len(out.vectors)} vectors for {len(batch)} texts"
                )
            vectors.extend(out.vectors)
        return vectors

    async def generate(
        self, ctx: Context, model: str | None, messages: list[dict[str, str]], max_tokens: int
    ) -> GenerateResponse:
        return await self.client.call(
            gateway.GENERATE,
            GenerateRequest.model_validate(
                {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
            ),
            ctx,
        )

    async def prompt_context(self, ctx: Context, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The Prompt Service's assembled messages, or ``None`` if it does not answer usably
        (absent, failing, or a contract this version does not understand)."""
        try:
            out = await self.client.call_raw(
                prompt.CONTEXT, payload, child(ctx, timeout=PROMPT_CONTEXT_TIMEOUT_S)
            )
        except MeshError as exc:
            _log.info("prompt_context_unavailable", code=exc.code)
            return None
        if not isinstance(out, dict) or not isinstance(out.get("messages"), list):
            return None
        return out
