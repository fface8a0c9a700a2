"""Keys of cached run answers (the cache service, namespace reserved to the agent)."""

from __future__ import annotations

import hashlib
import json

from schemas.agent import Agent


def cache_key(agent: Agent, task: str, offered: list[str], context: str | None = None) -> str:
    """``context``: what else the answer depends on (the passages auto retrieval showed),
    so a changed document is a new key rather than a stale answer."""
    parts: list[object] = [task, sorted(offered)]
    if context is not None:
        parts.append(context)
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]
    return f"run:{agent.agent_id}:v{agent.version}:{digest}"


def cache_tag(agent_id: str) -> str:
    return f"_agent.{agent_id}"  # reserved, like the namespace
