"""``mesh bridge``: the bridge under uvicorn until SIGINT/SIGTERM.

uvicorn's shutdown is graceful: it stops accepting, lets in-flight requests finish (up
to :data:`GRACEFUL_SHUTDOWN_S`, which also bounds open SSE streams), then runs the app's
lifespan exit, which drains the NATS connection.

``mesh bridge --processes N`` runs N bridge processes behind one port: uvicorn's
supervisor binds the socket once and each child process accepts from it (a kernel-shared
listening socket), builds its own app from the same environment and keeps its own NATS
and Redis connections. The bridge keeps no state of its own between requests (quotas are
in Redis), so any process can answer any request (docs/bridge.md, "How it scales").
"""

from __future__ import annotations

import os
import signal
import sys

import uvicorn
from starlette.applications import Starlette

from gateway_bridge.app import create_app
from gateway_bridge.settings import BridgeSettings

GRACEFUL_SHUTDOWN_S = 10


def child_app() -> Starlette:
    """The app of one of ``--processes N``: settings, logging and tracing from the
    environment the supervisor passed on (uvicorn imports this by name in each child)."""
    from bus.telemetry import setup_logging, setup_tracing

    settings = BridgeSettings(service_name="bridge")
    setup_logging(settings.log_level, settings.log_format)
    setup_tracing("bridge", settings.otel_exporter_otlp_endpoint)
    return create_app(settings)


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


def run(settings: BridgeSettings, processes: int = 1) -> None:
    """Serve until SIGINT/SIGTERM; ``processes`` > 1 runs that many behind one port."""
    if processes > 1:
        _run_processes(settings, processes)
        return
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


def _run_processes(settings: BridgeSettings, processes: int) -> None:
    # The children rebuild their settings from the environment: hand on what the command
    # decided beyond it (the development secret) the same way.
    if settings.jwt_secret and not os.environ.get("JWT_SECRET"):
        os.environ["JWT_SECRET"] = settings.jwt_secret
    uvicorn.run(
        "gateway_bridge.server:child_app",
        factory=True,
        workers=processes,
        host=settings.bridge_host,
        port=settings.bridge_port,
        lifespan="on",
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )
