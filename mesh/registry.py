"""Every worker the mesh knows: name → its lifespan, imported only when run."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

#: Service name → module exposing ``lifespan(env) -> async context manager of Worker``.
WORKERS: dict[str, str] = {
    "cache": "workers.cache",
    "prompt": "workers.prompt",
    "ingestion": "workers.ingestion",
    "rag": "workers.rag",
    "gateway": "workers.gateway",
    "agent": "workers.agent",
    "ml": "workers.ml",
    "promptgen": "workers.promptgen",
    "llmops": "workers.llmops",
}


def lifespan_of(name: str) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    if name not in WORKERS:
        raise SystemExit(f"unknown worker {name!r}; known: {', '.join(WORKERS)}")
    lifespan: Callable[[Any], AbstractAsyncContextManager[Any]]
    lifespan = importlib.import_module(WORKERS[name]).lifespan
    return lifespan
