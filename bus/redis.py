"""A Redis client whose every call has a socket timeout (no call hangs when Redis is down)."""

from __future__ import annotations

import redis.asyncio as aioredis

SOCKET_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 64


def create_redis(url: str, *, socket_timeout: float = SOCKET_TIMEOUT_S) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        max_connections=MAX_CONNECTIONS,
        health_check_interval=30,
        # One attempt per call: the caller's deadline and retry policy decide the rest.
        retry_on_timeout=False,
        retry=None,
    )
