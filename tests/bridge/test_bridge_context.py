"""The envelope's context comes from the verified token only; ids, deadlines and traces."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from opentelemetry.trace import SpanKind

from bus.context import new_context
from bus.uploads import delete_object
from bus.worker import Endpoint, Worker
from gateway_bridge.app import create_app
from schemas import gateway, ingestion
from schemas.cache import CacheGetResponse
from schemas.context import Context
from schemas.gateway import ModelsRequest, ModelsResponse
from schemas.ingestion import SubmitRequest, SubmitResponse
from schemas.routes import Route
from tests.bridge_support import ALL_ROUTES, auth, bridge_settings, hs_token, http, serving
from tests.support import Empty, Probe, SleepRequest, probe_op, probe_worker

ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
SHORT_SLEEP = Route(
    "POST",
    "/api/v1/probe/short",
    probe_op("sleep", SleepRequest, Empty, idempotent=False),
    timeout=0.5,
)


@pytest.fixture(scope="module")
async def probe(env):
    async with probe_worker(Probe()).serve(env.nc):
        yield


@pytest.fixture(scope="module")
async def bridge(settings, probe, cache_worker):
    s = bridge_settings(settings)
    async with serving(create_app(s, (*ALL_ROUTES, SHORT_SLEEP))) as url:
        yield url


async def test_tenant_claims_from_the_client_are_ignored(bridge):
    async with http(bridge) as c:
        r = await c.post(
            "/api/v1/probe/echo?tenant=B&tenant_id=B",
            json={"text": "x", "tenant_id": "B", "tenant": "B", "tenantId": "B"},
            headers={**auth(hs_token(tenant="A")), "X-Tenant-ID": "B", "X-Tenant": "B"},
        )
    assert r.status_code == 200, r.text
    assert r.json()["tenant"] == "A"


async def test_cache_write_with_a_spoofed_tenant_lands_in_the_token_tenant(bridge, client):
    key = f"iso-{uuid.uuid4().hex}"
    async with http(bridge) as c:
        r = await c.post(
            "/api/v1/cache/set",
            json={"key": key, "value": "from-A", "tenant_id": "B"},
            headers={**auth(hs_token(tenant="A")), "X-Tenant-ID": "B"},
        )
        as_b = await c.post(
            "/api/v1/cache/get", json={"key": key}, headers=auth(hs_token(tenant="B"))
        )
    assert r.status_code == 200, r.text
    assert as_b.json() == {"hit": False, "value": None}
    in_a = await client.request(
        "cache.get.request", {"key": key}, new_context("A"), CacheGetResponse
    )
    in_b = await client.request(
        "cache.get.request", {"key": key}, new_context("B"), CacheGetResponse
    )
    assert in_a == CacheGetResponse(hit=True, value="from-A")
    assert not in_b.hit


async def test_user_and_roles_reach_the_worker_from_the_token(bridge):
    token = hs_token(tenant="acme", user="alice", roles=["admin", "reader"])
    async with http(bridge) as c:
        r = await c.post("/api/v1/probe/echo", json={"text": "x"}, headers=auth(token))
    assert r.json()["roles"] == ["admin", "reader"]


async def test_valid_correlation_id_is_kept_end_to_end(bridge):
    async with http(bridge) as c:
        r = await c.post(
            "/api/v1/probe/echo",
            json={"text": "x"},
            headers={**auth(hs_token()), "X-Correlation-ID": "order-42.retry@web"},
        )
    assert r.headers["x-correlation-id"] == "order-42.retry@web"
    assert r.json()["correlation_id"] == "order-42.retry@web"
    assert ID.match(r.headers["x-request-id"])


@pytest.mark.parametrize("given", ["", "has space", "x" * 200, "semi;colon"])
async def test_invalid_correlation_id_is_replaced_by_a_generated_one(bridge, given):
    async with http(bridge) as c:
        r = await c.post(
            "/api/v1/probe/echo",
            json={"text": "x"},
            headers={**auth(hs_token()), "X-Correlation-ID": given},
        )
    assert r.status_code == 200
    generated = r.headers["x-correlation-id"]
    assert generated != given and ID.match(generated)
    assert r.json()["correlation_id"] == generated


async def test_ids_are_returned_on_every_response_even_errors(bridge):
    async with http(bridge) as c:
        responses = [
            await c.get("/healthz"),
            await c.get("/no/such/route"),
            await c.post("/api/v1/probe/echo", json={"text": "x"}),
        ]
    for r in responses:
        assert ID.match(r.headers["x-correlation-id"]) and ID.match(r.headers["x-request-id"])
    assert [r.status_code for r in responses] == [200, 404, 401]


async def test_path_and_query_parameters_merge_into_the_request(bridge):
    async with http(bridge) as c:
        r = await c.get("/api/v1/probe/echo/hello?n=3", headers=auth(hs_token()))
    assert r.status_code == 200, r.text
    assert (r.json()["text"], r.json()["n"]) == ("hello", 3)


async def test_client_timeout_header_sets_the_deadline(bridge):
    started = time.monotonic()
    async with http(bridge) as c:
        r = await c.post(
            "/api/v1/probe/sleep",
            json={"seconds": 5},
            headers={**auth(hs_token()), "X-Request-Timeout": "0.5"},
        )
    assert r.status_code == 504
    assert r.json()["code"] == "timeout"
    assert time.monotonic() - started < 4.5


async def test_route_default_timeout_sets_the_deadline(bridge):
    async with http(bridge) as c:
        r = await c.post("/api/v1/probe/short", json={"seconds": 5}, headers=auth(hs_token()))
    assert r.status_code == 504


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "0.01"])
async def test_invalid_timeout_header_is_400(bridge, value):
    async with http(bridge) as c:
        r = await c.post(
            "/api/v1/probe/echo",
            json={"text": "x"},
            headers={**auth(hs_token()), "X-Request-Timeout": value},
        )
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_request"


async def test_one_trace_covers_http_and_worker(bridge, spans):
    async with http(bridge) as c:
        r = await c.post("/api/v1/probe/echo", json={"text": "x"}, headers=auth(hs_token()))
    assert r.status_code == 200
    finished = spans.get_finished_spans()
    edge = next(s for s in finished if s.name == "POST /api/v1/probe/echo")
    worker = next(s for s in finished if s.name == "probe.echo.request")
    assert edge.kind == SpanKind.SERVER
    assert worker.context.trace_id == edge.context.trace_id
    assert worker.parent is not None and worker.parent.span_id == edge.context.span_id
    assert edge.attributes["mesh.tenant"] == "acme"
    assert edge.attributes["http.response.status_code"] == 200


async def test_incoming_traceparent_continues_the_callers_trace(bridge, spans):
    trace_id = uuid.uuid4().hex
    parent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    async with http(bridge) as c:
        await c.post(
            "/api/v1/probe/echo",
            json={"text": "x"},
            headers={**auth(hs_token()), "traceparent": parent},
        )
    worker = next(s for s in spans.get_finished_spans() if s.name == "probe.echo.request")
    assert format(worker.context.trace_id, "032x") == trace_id


@pytest.fixture
async def untraced_bridge(settings, probe, monkeypatch):
    """A bridge started while no tracer provider is installed (it records no spans)."""
    monkeypatch.setattr("gateway_bridge.edge.tracing_enabled", lambda: False)
    async with serving(create_app(bridge_settings(settings), ALL_ROUTES)) as url:
        yield url


async def test_without_tracing_the_callers_trace_context_still_reaches_the_worker(
    untraced_bridge, spans
):
    trace_id = uuid.uuid4().hex
    parent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    async with http(untraced_bridge) as c:
        r = await c.post(
            "/api/v1/probe/echo",
            json={"text": "x"},
            headers={**auth(hs_token()), "traceparent": parent, "tracestate": "k=v"},
        )
    assert r.status_code == 200
    finished = spans.get_finished_spans()
    assert not [s for s in finished if s.kind == SpanKind.SERVER and s.name.startswith("POST")]
    worker = next(s for s in finished if s.name == "probe.echo.request")
    assert format(worker.context.trace_id, "032x") == trace_id


@pytest.mark.parametrize(
    "traceparent",
    ["garbage", f"00-{'0' * 32}-{'1' * 16}-01", "00-" + "a" * 200, f"ff-{'a' * 32}-{'1' * 16}-01"],
)
async def test_without_tracing_an_invalid_traceparent_is_dropped(
    untraced_bridge, spans, traceparent
):
    async with http(untraced_bridge) as c:
        r = await c.post(
            "/api/v1/probe/echo",
            json={"text": "x"},
            headers={**auth(hs_token()), "traceparent": traceparent},
        )
    assert r.status_code == 200  # the worker got a valid context (no oversized traceparent)
    worker = next(s for s in spans.get_finished_spans() if s.name == "probe.echo.request")
    assert worker.parent is None  # a new trace, not the malformed one


# -- every route keeps the caller's trace context (issue #10, item 10) --------------------


@pytest.fixture
async def seen(env) -> AsyncIterator[list[Context]]:
    """Stand-ins answering ``gateway.models`` and ``ingestion.submit`` (deleting the files
    they were handed) that record the context each request arrived with."""
    contexts: list[Context] = []

    async def models(req: ModelsRequest, ctx: Context) -> ModelsResponse:
        contexts.append(ctx)
        return ModelsResponse(models=[])

    async def submit(req: SubmitRequest, ctx: Context) -> SubmitResponse:
        contexts.append(ctx)
        for doc in req.documents:
            assert doc.object is not None and ctx.tenant is not None
            await delete_object(env.js, doc.object.name, ctx.tenant)
        return SubmitResponse(jobs=[])

    async with (
        Worker("gateway", endpoints=[Endpoint(gateway.MODELS, models)]).serve(env.nc),
        Worker("ingestion", endpoints=[Endpoint(ingestion.SUBMIT, submit)]).serve(env.nc),
    ):
        yield contexts


async def _with_trace(c, method: str, path: str, **kw) -> tuple[str, str]:
    trace_id = uuid.uuid4().hex
    parent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    headers = {**auth(hs_token()), "traceparent": parent, "tracestate": "vendor=x"}
    r = await c.request(method, path, headers=headers, **kw)
    assert r.status_code < 300, r.text
    return trace_id, parent


@pytest.mark.parametrize("traced", [False, True], ids=["untraced_edge", "traced_edge"])
async def test_openai_and_upload_routes_pass_the_trace_context_to_the_worker(
    settings, seen, monkeypatch, traced
):
    if not traced:
        monkeypatch.setattr("gateway_bridge.edge.tracing_enabled", lambda: False)
    async with serving(create_app(bridge_settings(settings))) as url, http(url) as c:
        models_trace, models_parent = await _with_trace(c, "GET", "/v1/models")
        upload_trace, upload_parent = await _with_trace(
            c,
            "POST",
            "/api/v1/ingestion/upload",
            data={"collection_id": "col-trace"},
            files=[("file", ("a.md", b"# A\n\ntext", "text/markdown"))],
        )
    assert len(seen) == 2
    for ctx, trace_id, parent in zip(
        seen, (models_trace, upload_trace), (models_parent, upload_parent), strict=True
    ):
        assert ctx.traceparent is not None
        assert ctx.traceparent.split("-")[1] == trace_id  # the caller's trace continues
        if traced:  # the edge's own span is the parent now; the caller's state travels on
            assert ctx.traceparent != parent
        else:  # carried unchanged, state included
            assert (ctx.traceparent, ctx.tracestate) == (parent, "vendor=x")


@pytest.fixture
async def gateway_and_ingestion(env):
    """A scripted gateway and an ingestion stand-in that records the context it got."""
    from tests.fake_gateway import FakeGateway

    async def submit(req: SubmitRequest, ctx) -> SubmitResponse:
        return SubmitResponse(jobs=[])

    stand_in = Worker("ingestion", [Endpoint(ingestion.SUBMIT, submit)])
    async with FakeGateway().worker().serve(env.nc), stand_in.serve(env.nc):
        yield


async def test_openai_and_upload_routes_keep_the_callers_trace_context(
    untraced_bridge, gateway_and_ingestion, spans
):
    async with http(untraced_bridge) as c:
        for subject, call in (
            (
                "gateway.embed.request",
                lambda h: c.post("/v1/embeddings", json={"input": ["a cat"]}, headers=h),
            ),
            (
                "ingestion.submit.request",
                lambda h: c.post(
                    "/api/v1/ingestion/upload",
                    data={"collection_id": "col-any"},
                    files=[("file", ("a.md", b"# A\n\ntext\n", "text/markdown"))],
                    headers=h,
                ),
            ),
        ):
            trace_id = uuid.uuid4().hex
            parent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
            spans.clear()
            r = await call({**auth(hs_token()), "traceparent": parent, "tracestate": "k=v"})
            assert r.status_code in (200, 202), r.text
            worker = next(s for s in spans.get_finished_spans() if s.name == subject)
            assert format(worker.context.trace_id, "032x") == trace_id, subject
