"""The single operation declaration: every party derives subject, models and retry policy
from one ``Operation``, so they cannot disagree."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator

import pytest

from bus.client import Client, RetryPolicy
from bus.context import new_context
from bus.errors import Unavailable
from bus.worker import Endpoint, Worker
from gateway_bridge.routes import ROUTES
from mesh.registry import WORKERS
from schemas.context import Context
from schemas.operations import Operation
from tests.support import FLAKY, EchoRequest, EchoResponse, Empty, Probe, probe_worker

SERVICE_MODULES = {name: importlib.import_module(f"schemas.{name}") for name in WORKERS}


def test_every_route_uses_an_operation_its_service_declares():
    for route in ROUTES:
        service = route.op.service
        assert route.op in SERVICE_MODULES[service].OPERATIONS, route.path


def test_subjects_are_unique_across_the_mesh():
    subjects = [op.subject for m in SERVICE_MODULES.values() for op in m.OPERATIONS]
    assert len(subjects) == len(set(subjects))


def test_paid_and_creating_operations_are_never_retried():
    from schemas import agent, gateway, rag

    for op in (gateway.GENERATE, gateway.STREAM, rag.QUERY, agent.EXECUTE, agent.CREATE):
        assert op.idempotent is False, op.subject


@pytest.mark.parametrize("bad", ["Cache", "cache.get", "", "1x", "a-b"])
def test_operation_names_are_snake_case_tokens(bad):
    with pytest.raises(ValueError, match="snake_case"):
        Operation(bad, "get", Empty, Empty)
    with pytest.raises(ValueError, match="snake_case"):
        Operation("cache", bad, Empty, Empty)


def test_served_as_keeps_everything_but_the_subject():
    from schemas import gateway

    stand_in = gateway.GENERATE.served_as("gw_test")
    assert stand_in.subject == "gw_test.generate.request"
    assert (stand_in.request, stand_in.response, stand_in.idempotent) == (
        gateway.GENERATE.request,
        gateway.GENERATE.response,
        False,
    )


def test_a_streaming_operation_needs_an_async_generator_handler():
    async def once(req: EchoRequest, ctx: Context) -> EchoResponse:
        return EchoResponse(text=req.text)

    async def chunks(req: EchoRequest, ctx: Context) -> AsyncIterator[EchoResponse]:
        yield EchoResponse(text=req.text)

    streaming = Operation("probe", "s", EchoRequest, EchoResponse, streaming=True)
    plain = Operation("probe", "p", EchoRequest, EchoResponse)
    with pytest.raises(TypeError, match="async generator"):
        Endpoint(streaming, once)
    with pytest.raises(TypeError, match="coroutine function"):
        Endpoint(plain, chunks)


def test_a_worker_serves_only_its_own_service():
    async def handler(req: Empty, ctx: Context) -> Empty:
        return Empty()

    with pytest.raises(ValueError, match="cannot serve cache.get.request"):
        Worker("probe", endpoints=[Endpoint(Operation("cache", "get", Empty, Empty), handler)])


@pytest.fixture
async def probe(env):
    p = Probe()
    async with probe_worker(p).serve(env.nc):
        yield p


async def test_call_retries_as_the_operation_declares(probe, env):
    client = Client(env.nc, retry=RetryPolicy(max_attempts=3, base_delay=0.01))
    probe.fail_first = 2
    await client.call(FLAKY, Empty(), new_context("acme", timeout=5))
    assert probe.flaky_calls == 3

    probe.flaky_calls, probe.fail_first = 0, 2
    once = Operation("probe", "flaky", Empty, Empty, idempotent=False)
    with pytest.raises(Unavailable):
        await client.call(once, Empty(), new_context("acme", timeout=5))
    assert probe.flaky_calls == 1


async def test_call_returns_the_operations_response_model(probe, client):
    from tests.support import ECHO

    out = await client.call(ECHO, EchoRequest(text="hi"), new_context("acme", timeout=5))
    assert isinstance(out, EchoResponse) and out.text == "hi"


async def test_stream_refuses_a_plain_operation(client):
    from tests.support import ECHO

    with pytest.raises(TypeError, match="not a streaming operation"):
        client.stream(ECHO, EchoRequest(text="x"), new_context("acme"))
