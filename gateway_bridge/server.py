"""``mesh bridge``: the bridge under uvicorn until SIGINT/SIGTERM.

uvicorn's shutdown is graceful: it stops accepting, lets in-flight requests finish (up
to :data:`GRACEFUL_SHUTDOWN_S`, which also bounds open SSE streams), then runs the app's
lifespan exit, which drains the NATS connection.
"""

from __future__ import annotations

import signal
import sys

import uvicorn

from gateway_bridge.app import create_app
from gateway_bridge.settings import BridgeSettings

GRACEFUL_SHUTDOWN_S = 10


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


def run(settings: BridgeSettings) -> None:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.bridge_host,
        port=settings.bridge_port,
        lifespan="on",
        access_log=False,  # the edge middleware writes one structured line per request
        log_level=settings.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
    # uvicorn handles SIGINT/SIGTERM itself while serving; once shut down it restores the
    # previous handlers and re-raises the signal: let that end the process with status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_cleanly)
    uvicorn.Server(config).run()
