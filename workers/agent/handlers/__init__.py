"""The Agent Service's handlers, one module per resource (the way nats.micro groups
endpoints): agents, tools and settings, runs, chat threads, memory.

Every handler loads what it needs from Postgres, scoped by ``ctx.tenant``; nothing is
kept in memory between requests, so any replica answers any request. Threads and runs
belong to the user who made them (``agent:admin`` sees all); see ``policy`` for roles.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.codec import Codec
from workers.agent.handlers.agents import Agents
from workers.agent.handlers.chat import Chat
from workers.agent.handlers.memory import Memory
from workers.agent.handlers.runs import RunHandlers
from workers.agent.handlers.tools import Tools
from workers.agent.remote import Remote
from workers.agent.runs import Runs
from workers.agent.store import Store

__all__ = ["Agents", "Chat", "Handlers", "Memory", "RunHandlers", "Tools"]


@dataclass(frozen=True)
class Handlers:
    agents: Agents
    tools: Tools
    runs: RunHandlers
    chat: Chat
    memory: Memory

    @classmethod
    def build(cls, store: Store, runs: Runs, remote: Remote, codec: Codec) -> Handlers:
        return cls(
            agents=Agents(store, remote, runs.config, runs.js, codec),
            tools=Tools(store),
            runs=RunHandlers(store, runs, codec),
            chat=Chat(store, runs),
            memory=Memory(store, remote),
        )
