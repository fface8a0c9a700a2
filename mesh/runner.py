"""Run workers in this process against configured infrastructure."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import structlog

from bus.client import Client
from bus.codec import Codec
from bus.connection import connect
from bus.jetstream import ensure_streams
from bus.settings import Settings
from bus.worker import WorkerEnv
from mesh.registry import lifespan_of

_log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def bus_env(settings: Settings, name: str) -> AsyncIterator[WorkerEnv]:
    """A NATS connection, a client and JetStream (streams ensured) for one process."""
    if not settings.nats_url:
        raise SystemExit("NATS_URL is not set (mesh up starts an embedded one)")
    nc = await connect(
        settings.nats_url, name=name, user=settings.nats_user, password=settings.nats_password
    )
    try:
        js = nc.jetstream()
        if settings.jetstream_provision:  # production: `mesh provision` did it
            await ensure_streams(
                js,
                replicas=settings.jetstream_replicas,
                uploads_max_bytes=settings.uploads_bucket_max_bytes,
            )
        client = Client(nc, codec=Codec(settings.codec_type))
        yield WorkerEnv(settings=settings, nc=nc, client=client, js=js)
    finally:
        if not nc.is_closed:
            await nc.drain()


@contextlib.asynccontextmanager
async def serving(names: list[str], env: WorkerEnv) -> AsyncIterator[None]:
    """Start each named worker's resources and service; stop them in reverse order.

    With ``HEALTH_DIR`` set, each service's instance id is written to
    ``<HEALTH_DIR>/<name>.id`` once it serves, for ``mesh probe <name>``.
    """
    health = Path(env.settings.health_dir) if env.settings.health_dir else None
    async with contextlib.AsyncExitStack() as stack:
        for name in names:
            worker = await stack.enter_async_context(lifespan_of(name)(env))
            service = await stack.enter_async_context(worker.serve(env.nc))
            if health is not None:
                health.mkdir(parents=True, exist_ok=True)
                (health / f"{name}.id").write_text(str(service.id))
                stack.callback((health / f"{name}.id").unlink, missing_ok=True)
        yield


async def run_workers(names: list[str], settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM, then drain in-flight work and exit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with bus_env(settings, name="+".join(names)) as env, serving(names, env):
        _log.info("serving", workers=names)
        await stop.wait()
    _log.info("stopped", workers=names)
