"""Keys of cached run answers (the cache service, namespace reserved to the agent)."""

from __future__ import annotations

import hashlib
import json

from schemas.agent import Agent


def cache_key(agent: Agent, task: str, offered: list[str]) -> str:
    digest = hashlib.sha256(json.dumps([task, sorted(offered)]).encode()).hexdigest()[:40]
    return f"run:{agent.agent_id}:v{agent.version}:{digest}"


def cache_tag(agent_id: str) -> str:
    return f"_agent.{agent_id}"  # reserved, like the namespace
