"""The worker runtime and client against a real nats-server."""

from __future__ import annotations

import asyncio
import random
import time

import msgpack
import pytest
import structlog
from pydantic import BaseModel

from bus.client import Client, RetryPolicy
from bus.codec import Codec
from bus.context import new_context, now_ms
from bus.errors import (
    Internal,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Timeout,
    Unauthenticated,
    Unavailable,
)
from bus.types import ERROR_CODE_HEADER, ERROR_HEADER
from bus.worker import Endpoint, Worker
from schemas.context import Context
from schemas.operations import Operation
from tests.support import EchoRequest, EchoResponse, Empty, Probe, SleepRequest, probe_worker


@pytest.fixture
async def probe(env):
    p = Probe()
    async with probe_worker(p, max_concurrency=32).serve(env.nc):
        yield p


def ctx(tenant: str = "acme", timeout: float = 5.0, **kw) -> Context:
    return new_context(tenant, user="u1", timeout=timeout, **kw)


async def test_echo_round_trip_carries_context(probe, client):
    c = ctx(roles=["admin"])
    out = await client.request("probe.echo.request", EchoRequest(text="hi", n=3), c, EchoResponse)
    assert out == EchoResponse(
        text="hi", n=3, tenant="acme", correlation_id=c.correlation_id, roles=["admin"]
    )


async def test_json_client_talks_to_msgpack_worker(probe, env):
    client = Client(env.nc, codec=Codec("json"))
    out = await client.request("probe.echo.request", {"text": "j"}, ctx(), EchoResponse)
    assert out.text == "j"


async def test_missing_tenant_is_unauthenticated(probe, client):
    with pytest.raises(Unauthenticated):
        await client.request("probe.echo.request", {"text": "x"}, Context(correlation_id="c"))


async def test_schema_violation_is_invalid_request_with_field_details(probe, client):
    with pytest.raises(InvalidRequest) as info:
        await client.request("probe.echo.request", {"text": 5, "extra": 1}, ctx())
    locs = {tuple(d["loc"]) for d in info.value.details}
    assert locs == {("text",), ("extra",)}


async def test_handler_errors_keep_their_type(probe, client):
    with pytest.raises(NotFound, match="no such thing"):
        await client.request("probe.missing.request", {}, ctx())


async def test_crash_is_internal_and_leaks_nothing(probe, client, env):
    with pytest.raises(Internal) as info:
        await client.request("probe.crash.request", {}, ctx())
    assert "passwd" not in info.value.message and "RuntimeError" not in info.value.message
    raw = await env.nc.request(
        "probe.crash.request", Codec().encode(ctx().headers(), {}), timeout=5
    )
    assert raw.headers[ERROR_CODE_HEADER] == "500"
    assert "passwd" not in raw.headers[ERROR_HEADER]


async def test_thousand_hostile_bodies_get_invalid_request_and_worker_keeps_serving(
    probe, env, client
):
    rng = random.Random(1)
    deep = {"h": {"tenant": "acme"}, "d": None}
    node: dict = {}
    deep["d"] = node
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    hostile = [
        msgpack.packb(deep),
        msgpack.packb({"h": {"tenant": "acme"}, "d": {str(i): i for i in range(200_000)}}),
        msgpack.packb({"h": {"tenant": "acme"}, "d": {"text": ["not", "a", "string"]}}),
        msgpack.packb({"h": {"tenant": ["wrong", "type"]}, "d": {"text": "x"}}),
        msgpack.packb({"h": {"tenant": "a:b"}, "d": {"text": "x"}}),
        b'{"h": {"tenant": "acme"}, "d": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b"",
    ]
    bodies = hostile + [
        bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
        for _ in range(1000 - len(hostile))
    ]
    codes: dict[str, int] = {}

    async def send(body: bytes) -> None:
        msg = await env.nc.request("probe.echo.request", body, timeout=10)
        code = msg.headers[ERROR_CODE_HEADER]
        codes[code] = codes.get(code, 0) + 1

    for i in range(0, len(bodies), 100):
        await asyncio.gather(*(send(b) for b in bodies[i : i + 100]))
    assert codes == {"400": 1000}
    out = await client.request("probe.echo.request", {"text": "still here"}, ctx(), EchoResponse)
    assert out.text == "still here"


async def test_slow_handler_does_not_delay_fast_requests(probe, client):
    slow = asyncio.create_task(
        client.request("probe.sleep.request", SleepRequest(seconds=2), ctx())
    )
    await asyncio.sleep(0.05)
    started = time.monotonic()
    for i in range(20):
        await client.request("probe.echo.request", {"text": str(i)}, ctx())
    fast_elapsed = time.monotonic() - started
    assert not slow.done(), "the slow request should still be running"
    assert fast_elapsed < 1.5
    await slow


async def test_deadline_exceeded_is_timeout_not_a_hang(probe, client):
    started = time.monotonic()
    with pytest.raises(Timeout):
        await client.request("probe.sleep.request", {"seconds": 10}, ctx(timeout=0.5))
    assert time.monotonic() - started < 3


async def test_request_past_deadline_is_not_started(probe, env):
    past = Context(tenant="acme", deadline=now_ms() - 1000, request_id="r1")
    msg = await env.nc.request(
        "probe.sleep.request", Codec().encode(past.headers(), {"seconds": 1}), timeout=5
    )
    assert msg.headers[ERROR_CODE_HEADER] == "504"
    assert probe.sleeps_finished == 0


async def test_no_responders_is_unavailable_at_once(client):
    started = time.monotonic()
    with pytest.raises(Unavailable, match="no responders"):
        await client.request("nobody.home.request", {}, ctx(timeout=10))
    assert time.monotonic() - started < 1


async def test_idempotent_requests_retry_retryable_errors(probe, env):
    probe.fail_first = 2
    client = Client(env.nc, retry=RetryPolicy(max_attempts=3, base_delay=0.01))
    await client.request("probe.flaky.request", Empty(), ctx(), idempotent=True)
    assert probe.flaky_calls == 3


async def test_non_idempotent_requests_never_retry(probe, env):
    probe.fail_first = 2
    client = Client(env.nc, retry=RetryPolicy(max_attempts=5, base_delay=0.01))
    with pytest.raises(Unavailable):
        await client.request("probe.flaky.request", Empty(), ctx(), idempotent=False)
    assert probe.flaky_calls == 1


async def test_retries_stop_at_the_deadline(probe, env):
    probe.fail_first = 10_000
    client = Client(env.nc, retry=RetryPolicy(max_attempts=10_000, base_delay=0.05, max_delay=0.2))
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await client.request("probe.flaky.request", Empty(), ctx(timeout=1.0), idempotent=True)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert 2 <= probe.flaky_calls < 10_000


async def test_breaker_opens_half_opens_and_closes(probe, env):
    from bus.breaker import BreakerConfig

    changes: list[tuple[str, str]] = []
    client = Client(
        env.nc,
        breaker=BreakerConfig(failure_threshold=3, reset_timeout=0.3),
        on_breaker_change=lambda s, old, new: changes.append((old, new)),
    )
    probe.fail_first = 3
    for _ in range(3):
        with pytest.raises(Unavailable, match="flaky"):
            await client.request("probe.flaky.request", Empty(), ctx())
    assert client.breaker("probe.flaky.request").state == "open"
    with pytest.raises(Unavailable, match="circuit open"):
        await client.request("probe.flaky.request", Empty(), ctx())
    assert probe.flaky_calls == 3  # fast failure: the worker never saw it
    await asyncio.sleep(0.35)
    assert client.breaker("probe.flaky.request").state == "half_open"
    await client.request("probe.flaky.request", Empty(), ctx())  # the probe succeeds
    assert client.breaker("probe.flaky.request").state == "closed"
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_failed_probe_reopens_the_breaker(env):
    from bus.breaker import BreakerConfig

    client = Client(env.nc, breaker=BreakerConfig(failure_threshold=1, reset_timeout=0.1))
    with pytest.raises(Unavailable):
        await client.request("nobody.there.request", {}, ctx())
    await asyncio.sleep(0.15)
    with pytest.raises(Unavailable, match="no responders"):
        await client.request("nobody.there.request", {}, ctx())
    assert client.breaker("nobody.there.request").state == "open"


async def test_stream_yields_chunks_then_ends(probe, client):
    got = [
        c.text
        async for c in client.request_stream(
            "probe.count.request", {"text": "x", "n": 4}, ctx(), EchoResponse
        )
    ]
    assert got == ["x0", "x1", "x2", "x3"]


async def test_stream_error_after_chunks_raises_typed_error(probe, client):
    got = []
    with pytest.raises(NotFound, match="stream broke"):
        async for c in client.request_stream(
            "probe.count.request", {"text": "boom", "n": 2}, ctx()
        ):
            got.append(c)
    assert len(got) == 2


async def test_stream_without_responders_is_unavailable(client):
    with pytest.raises(Unavailable):
        async for _ in client.request_stream("nobody.stream.request", {}, ctx()):
            pass


async def test_one_trace_spans_client_to_worker(probe, client, spans):
    from opentelemetry import trace

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        await client.request("probe.echo.request", {"text": "t"}, ctx())
    trace_id = caller.get_span_context().trace_id
    server = [s for s in spans.get_finished_spans() if s.name == "probe.echo.request"]
    assert server and server[-1].context.trace_id == trace_id
    assert server[-1].parent is not None
    assert server[-1].parent.span_id == caller.get_span_context().span_id


async def test_stop_drains_in_flight_requests(env, client):
    p = Probe()
    worker = probe_worker(p, name="drainer")
    async with worker.serve(env.nc):
        pending = asyncio.create_task(
            client.request("drainer.sleep.request", {"seconds": 0.5}, ctx())
        )
        await asyncio.sleep(0.1)
    # Leaving serve() waited for the in-flight handler, which answered.
    assert p.sleeps_finished == 1
    assert await pending is not None


async def test_services_are_discoverable(probe, env):
    from mesh.tools import services

    rows = await services(env.settings.nats_url)
    probe_rows = [r for r in rows if r["name"] == "probe"]
    assert probe_rows
    subjects = {e["subject"] for e in probe_rows[0]["endpoints"]}
    assert "probe.echo.request" in subjects


async def test_caller_that_stops_reading_stops_the_worker_stream(probe, client):
    stream = client.request_stream("probe.ticks.request", {"text": "t", "n": 1000}, ctx(timeout=30))
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    await stream.aclose()
    await asyncio.wait_for(probe.ticks_stopped.wait(), 5)
    assert probe.ticks_sent < 100


@pytest.mark.parametrize(
    ("worker_codec", "client_codec"),
    [("protobuf", "msgpack"), ("msgpack", "protobuf"), ("protobuf", "json"), ("json", "protobuf")],
)
async def test_codecs_interoperate_in_one_mesh(env, worker_codec, client_codec):
    worker = probe_worker(Probe(), name="probemix", codec=Codec(worker_codec))
    async with worker.serve(env.nc):
        client = Client(env.nc, codec=Codec(client_codec))
        c = ctx(roles=["r"])
        out = await client.request("probemix.echo.request", {"text": "x", "n": 2}, c, EchoResponse)
        assert (out.text, out.n, out.roles, out.correlation_id) == ("x", 2, ["r"], c.correlation_id)
        with pytest.raises(InvalidRequest):
            await client.request("probemix.echo.request", {"text": 5}, ctx())


async def test_srv_stats_report_the_runtimes_own_counts(env, client):
    """$SRV.STATS (and so `mesh services`) shows what the runtime counted: each handled
    request, each error with the last one's code, the time spent handling."""
    from bus.worker import Endpoint, Worker
    from mesh.tools import services
    from tests.support import probe_op

    name = f"stats{random.randrange(10**9)}"
    op = probe_op("echo", EchoRequest, EchoResponse, service=name, idempotent=False)

    async def echo(req: EchoRequest, ctx: Context) -> EchoResponse:
        if req.text == "missing":
            raise NotFound("no such text")
        return EchoResponse(text=req.text, n=req.n, tenant=ctx.tenant)

    async with Worker(name, endpoints=[Endpoint(op, echo)]).serve(env.nc):
        await client.call(op, {"text": "hi"}, new_context("acme"))
        with pytest.raises(NotFound):
            await client.call(op, {"text": "missing"}, new_context("acme"))
        rows = [r for r in await services(env.settings.nats_url) if r["name"] == name]
    [row] = rows
    [ep] = row["endpoints"]
    assert (ep["num_requests"], ep["num_errors"]) == (2, 1)
    assert ep["last_error"] == "not_found: no such text"
    assert ep["average_processing_time"] > 0


# -- the consumers that read each endpoint (no task per request) ----------------------


class Hold(BaseModel):
    seconds: float = 0.0
    bind: bool = False


class Seen(BaseModel):
    log_keys: list[str] = []
    tenant: str | None = None
    cancelling: int = 0
    in_flight_max: int = 0


def _pool_worker(max_concurrency: int = 64) -> tuple[Worker, dict[str, int]]:
    stats = {"in_flight": 0, "max": 0}

    async def hold(req: Hold, ctx: Context) -> Seen:
        stats["in_flight"] += 1
        stats["max"] = max(stats["max"], stats["in_flight"])
        try:
            seen = structlog.contextvars.get_contextvars()
            if req.bind:  # what a handler binds must not reach the next request
                structlog.contextvars.bind_contextvars(leak="x")
            try:
                await asyncio.sleep(req.seconds)
            except asyncio.CancelledError:
                if req.bind:
                    raise
                # A handler that swallows the deadline's cancel (it should not).
            task = asyncio.current_task()
            assert task is not None
            return Seen(
                log_keys=sorted(seen),
                tenant=seen.get("tenant"),
                cancelling=task.cancelling(),
                in_flight_max=stats["max"],
            )
        finally:
            stats["in_flight"] -= 1

    op = Operation("pool", "hold", Hold, Seen)
    return Worker("pool", [Endpoint(op, hold)], max_concurrency=max_concurrency), stats


async def test_slow_requests_do_not_hold_up_others_on_the_same_endpoint(env, client):
    worker, _ = _pool_worker()
    async with worker.serve(env.nc):
        slow = [
            asyncio.create_task(client.request("pool.hold.request", Hold(seconds=2), ctx()))
            for _ in range(5)
        ]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await asyncio.gather(
            *(client.request("pool.hold.request", Hold(), ctx()) for _ in range(20))
        )
        assert time.monotonic() - started < 1.5
        assert not any(t.done() for t in slow), "the slow requests should still be running"
        await asyncio.gather(*slow)


async def test_max_concurrency_bounds_handlers_in_flight(env, client):
    worker, stats = _pool_worker(max_concurrency=3)
    async with worker.serve(env.nc):
        answers = await asyncio.gather(
            *(client.request("pool.hold.request", Hold(seconds=0.1), ctx()) for _ in range(12))
        )
    assert len(answers) == 12
    assert stats["max"] == 3


async def test_log_context_of_one_request_does_not_reach_the_next(env, client):
    worker, _ = _pool_worker()
    async with worker.serve(env.nc):
        # One after another: the few consumers each answer several of them.
        for i in range(10):
            tenant = f"t-{i}"
            seen = await client.request("pool.hold.request", Hold(bind=True), ctx(tenant=tenant))
            assert seen["tenant"] == tenant
            assert "leak" not in seen["log_keys"]


async def test_a_handler_that_swallows_its_deadline_leaves_no_cancel_behind(env, client):
    worker, _ = _pool_worker()
    async with worker.serve(env.nc):
        # The handler outlives its deadline (it ignores the cancel): the caller times out.
        with pytest.raises(Timeout):
            await client.request("pool.hold.request", Hold(seconds=0.5), ctx(timeout=0.2))
        await asyncio.sleep(0.6)
        for _ in range(5):
            seen = await client.request("pool.hold.request", Hold(), ctx())
            assert seen["cancelling"] == 0


class _Many(BaseModel):
    n: int


class _Values(BaseModel):
    values: list[int]


async def test_an_answer_too_large_for_one_message_is_payload_too_large(env, client):
    """An answer the caller's codec (same limits) would reject as malformed is refused by
    the worker with a reason; a large answer within the limits arrives whole."""
    limits = Codec().limits

    async def many(req: _Many, ctx: Context) -> _Values:
        return _Values(values=list(range(req.n)))

    op = Operation("big", "many", _Many, _Values)
    async with Worker("big", [Endpoint(op, many)]).serve(env.nc):
        with pytest.raises(PayloadTooLarge, match="more than one message carries"):
            await client.call(op, _Many(n=limits.max_container + 1), ctx())
        out = await client.call(op, _Many(n=limits.max_container - 10), ctx())
        assert len(out.values) == limits.max_container - 10
        # The worker still answers after refusing.
        assert (await client.call(op, _Many(n=3), ctx())).values == [0, 1, 2]
