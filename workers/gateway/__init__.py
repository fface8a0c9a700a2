"""Gateway Service: the one door to LLMs — generate, stream, embed, models, count_tokens —
through litellm, with offline local models, response caching and LLMOps events.

Importing this package changes nothing: :func:`lifespan` reads the gateway's settings and
sets litellm's offline switches (:func:`~workers.gateway.settings.prefer_offline`) before
the modules that import litellm are loaded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bus.worker import Worker, WorkerEnv
from workers.gateway.settings import GatewaySettings, prefer_offline


@asynccontextmanager
async def lifespan(
    env: WorkerEnv, settings: GatewaySettings | None = None
) -> AsyncIterator[Worker]:
    """The gateway worker; ``settings`` default to the environment's (``GATEWAY_*``)."""
    prefer_offline()
    from workers.gateway import service  # imports litellm: after prefer_offline()

    async with service.lifespan(env, settings or GatewaySettings()) as worker:
        yield worker


__all__ = ["GatewaySettings", "lifespan"]
