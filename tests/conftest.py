"""Session fixtures: real nats-server, Postgres + pgvector and Redis on free loopback ports,
started through the same module as ``mesh up`` (mesh.infra)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus.client import Client
from bus.connection import connect
from bus.jetstream import ensure_streams
from bus.settings import Settings
from bus.worker import WorkerEnv
from mesh.infra import READY_TIMEOUT_S, Infrastructure, embedded
from mesh.runner import serving
from tests.openai_mock import MockOpenAI
from workers.gateway.settings import prefer_offline

# Test modules import the gateway's modules (and so litellm) directly, not through the
# gateway's lifespan: litellm must find its offline switches before the first of them.
prefer_offline()

_SPANS = InMemorySpanExporter()


def pytest_configure(config: pytest.Config) -> None:
    # One global tracer provider for the session (OpenTelemetry allows setting it once).
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_SPANS))
    trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _SPANS.clear()
    yield _SPANS


@pytest.fixture(scope="session")
def infra() -> Iterator[Infrastructure]:
    # Not under pytest's basetemp: every pytest start resets /tmp/pytest-of-<user> to mode
    # 0700, which would cut the Postgres system user off from a session already running.
    base = Path(tempfile.mkdtemp(prefix="mesh-tests-"))
    try:
        with contextlib.ExitStack() as stack:
            try:
                servers = stack.enter_context(embedded(base, durable=False))
            except Exception as exc:
                # One clear message instead of one error per test that needs the servers.
                pytest.exit(f"test infrastructure did not start: {exc}", returncode=3)
            yield servers
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(infra: Infrastructure) -> Settings:
    assert infra.nats and infra.postgres and infra.redis
    return Settings(  # type: ignore[call-arg]
        nats_url=infra.nats.url,
        database_url=infra.postgres.url,
        redis_url=infra.redis.url,
    )


@pytest.fixture(scope="session")
async def env(settings: Settings) -> AsyncIterator[WorkerEnv]:
    assert settings.nats_url
    nc = await connect(settings.nats_url, name="tests")
    js = nc.jetstream()
    await _when_jetstream_is_ready(js)
    yield WorkerEnv(settings=settings, nc=nc, client=Client(nc), js=js)
    await nc.drain()


async def _when_jetstream_is_ready(js: JetStreamContext) -> None:
    """Create the streams, waiting for JetStream (it starts after the port opens and can
    take long on a loaded machine); one clear message if it never becomes ready."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + READY_TIMEOUT_S
    while True:
        try:
            await ensure_streams(js)
            return
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
            if loop.time() > give_up:
                pytest.exit(f"JetStream did not become ready: {exc!r}", returncode=3)
            await asyncio.sleep(0.5)


@pytest.fixture
def client(env: WorkerEnv) -> Client:
    """A fresh client per test, so breaker state never leaks between tests."""
    return Client(env.nc)


@pytest.fixture(scope="session")
async def cache_worker(env: WorkerEnv) -> AsyncIterator[None]:
    async with serving(["cache"], env):
        yield


@pytest.fixture(scope="module")
def mock() -> Iterator[MockOpenAI]:
    """A scripted OpenAI-compatible provider on 127.0.0.1 for one test module (see
    tests/openai_mock.py); litellm reaches it over HTTP as it reaches a real provider."""
    server = MockOpenAI()
    server.start()
    yield server
    server.stop()
