"""Agent Service: agents in Postgres, tool-calling runs, chat threads, memory and tools."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Imported on first use: a bus.offload process that runs one of this package's
    # functions should not import the whole service (NATS, Postgres, ...) to start.
    if name == "lifespan":
        from workers.agent.service import lifespan

        return lifespan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["lifespan"]
