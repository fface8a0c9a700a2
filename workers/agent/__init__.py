"""Agent Service: agents in Postgres, tool-calling runs, chat threads, memory and tools."""

from workers.agent.service import lifespan

__all__ = ["lifespan"]
