"""Streaming routes answer Server-Sent Events from the worker's streamed envelopes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel, Field

from bus.worker import Endpoint, Worker
from gateway_bridge.app import create_app
from schemas.context import Context
from schemas.operations import Operation
from schemas.routes import Route
from tests.bridge_support import ALL_ROUTES, auth, bridge_settings, hs_token, http, serving
from tests.support import EchoResponse, Probe, probe_worker


class TickRequest(BaseModel):
    n: int = Field(default=1000, le=1000)
    every: float = Field(default=0.02, le=1)


async def tick(req: TickRequest, ctx: Context) -> AsyncIterator[EchoResponse]:
    for i in range(req.n):
        yield EchoResponse(text="tick", n=i)
        await asyncio.sleep(req.every)


TICK_OP = Operation("ticker", "tick", TickRequest, EchoResponse, streaming=True)
TICK = Route("POST", "/api/v1/ticker/tick", TICK_OP)


@pytest.fixture(scope="module")
async def workers(env):
    ticker = Worker("ticker", endpoints=[Endpoint(TICK_OP, tick)])
    async with probe_worker(Probe()).serve(env.nc), ticker.serve(env.nc):
        yield


@pytest.fixture(scope="module")
async def app(settings):
    return create_app(bridge_settings(settings), (*ALL_ROUTES, TICK))


@pytest.fixture(scope="module")
async def bridge(app, workers):
    async with serving(app) as url:
        yield url


def parse(text: str) -> list[dict]:
    """SSE text → [{"event", "id", "data"}] (data parsed as JSON)."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append(
            {
                "event": fields.get("event", "message"),
                "id": fields.get("id"),
                "data": json.loads(fields["data"]),
            }
        )
    return events


async def test_chunks_stream_as_events_then_an_end_event(bridge):
    async with http(bridge) as c:
        r = await c.post(
            "/api/v1/probe/count", json={"text": "c", "n": 3}, headers=auth(hs_token())
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse(r.text)
    assert [(e["event"], e["id"]) for e in events] == [
        ("message", "1"),
        ("message", "2"),
        ("message", "3"),
        ("end", None),
    ]
    assert [e["data"]["text"] for e in events[:3]] == ["c0", "c1", "c2"]


async def test_error_mid_stream_is_an_error_event_with_problem_details(bridge):
    async with http(bridge) as c:
        r = await c.post(
            "/api/v1/probe/count", json={"text": "boom", "n": 2}, headers=auth(hs_token())
        )
    events = parse(r.text)
    assert [e["event"] for e in events] == ["message", "message", "error"]
    problem = events[-1]["data"]
    assert problem["code"] == "not_found" and problem["status"] == 404
    assert problem["correlation_id"] == r.headers["x-correlation-id"]


async def test_error_before_the_first_chunk_is_a_plain_problem_response(bridge):
    async with http(bridge) as c:
        r = await c.post(
            "/api/v1/probe/count", json={"text": "boom", "n": 0}, headers=auth(hs_token())
        )
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


async def test_empty_stream_is_just_the_end_event(bridge):
    async with http(bridge) as c:
        r = await c.post(
            "/api/v1/probe/count", json={"text": "x", "n": 0}, headers=auth(hs_token())
        )
    assert [e["event"] for e in parse(r.text)] == ["end"]


async def test_client_disconnect_cancels_the_stream_and_its_subscription(app, bridge):
    nc = app.state.bridge.nc
    baseline = len(nc._subs)
    async with (
        http(bridge) as c,
        # The ticker would tick for 20 s; its deadline ends it after 4 s at the latest.
        c.stream(
            "POST",
            "/api/v1/ticker/tick",
            json={},
            headers={**auth(hs_token()), "X-Request-Timeout": "4"},
        ) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                break  # one event seen; now hang up
        assert len(nc._subs) == baseline + 1  # the stream's inbox subscription
    async with asyncio.timeout(2):  # well before the deadline would have ended the stream
        while len(nc._subs) != baseline:
            await asyncio.sleep(0.02)
    metrics = app.state.bridge.metrics
    assert metrics.registry.get_sample_value("bridge_requests_in_flight") == 0
