"""The workers a RAG bench runs in its own process: the gateway (the real one, or the
TEST-ONLY fake when this build has no Gateway Service), then the named workers, each
serving on the bench's NATS connection until the bench's exit stack closes."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import Any

from bus.worker import WorkerEnv
from mesh.registry import lifespan_of


async def serve_workers(
    env: WorkerEnv, stack: AsyncExitStack, names: Iterable[str], *, real_gateway: bool
) -> dict[str, Any]:
    """Start the gateway and ``names`` in this order; the workers by name."""
    workers: dict[str, Any] = {}
    if not real_gateway:
        from tests.fake_gateway import FakeGateway

        await stack.enter_async_context(FakeGateway().worker().serve(env.nc))
    for name in [*(["gateway"] if real_gateway else []), *names]:
        worker = await stack.enter_async_context(lifespan_of(name)(env))
        await stack.enter_async_context(worker.serve(env.nc))
        workers[name] = worker
    return workers


def answering(worker: Any, operation: str) -> Any:
    """The object whose method answers ``operation`` (e.g. RAG's indexer behind
    ``ingest``: its stats and models)."""
    return next(e.handler for e in worker.endpoints if e.op.name == operation).__self__
