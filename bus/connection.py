"""The NATS connection every process uses: it reconnects and never gives up."""

from __future__ import annotations

import asyncio

import nats
import structlog
from nats.aio.client import Client as NATS

_log = structlog.get_logger("bus.connection")

#: nats-py gives up after 60 attempts (~2 minutes) by default; a worker must not.
RECONNECT_FOREVER = -1
CONNECT_TIMEOUT_S = 2.0
RECONNECT_WAIT_S = 1.0


async def connect(url: str, name: str, *, first_attempt_timeout: float | None = 60.0) -> NATS:
    """Connect to ``url``; keep retrying the first connection for ``first_attempt_timeout`` s.

    After the first connection, reconnects are unlimited (nats-py buffers publishes
    while reconnecting, up to its pending size).
    """

    async def on_error(exc: Exception) -> None:
        _log.warning("nats_error", error=str(exc) or type(exc).__name__)

    async def on_disconnect() -> None:
        _log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        _log.info("nats_reconnected")

    loop = asyncio.get_running_loop()
    give_up = None if first_attempt_timeout is None else loop.time() + first_attempt_timeout
    pause = 0.1
    while True:
        try:
            return await nats.connect(
                url,
                name=name,
                connect_timeout=CONNECT_TIMEOUT_S,
                reconnect_time_wait=RECONNECT_WAIT_S,
                max_reconnect_attempts=RECONNECT_FOREVER,
                allow_reconnect=True,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
        except (OSError, nats.errors.NoServersError, TimeoutError) as exc:
            if give_up is not None and loop.time() + pause > give_up:
                raise
            _log.warning("nats_connect_retry", url=url, error=type(exc).__name__)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
