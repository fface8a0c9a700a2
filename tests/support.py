"""A small worker used to exercise the runtime: echo, sleep, fail, stream, flaky."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bus.errors import NotFound, Unavailable
from bus.worker import Endpoint, Worker
from schemas.context import Context
from schemas.operations import Operation


class EchoRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=10_000)
    n: int = 0


class EchoResponse(BaseModel):
    text: str
    n: int
    tenant: str | None = None
    correlation_id: str | None = None
    roles: list[str] = []


class SleepRequest(BaseModel):
    seconds: float = Field(ge=0, le=60)


class Empty(BaseModel):
    pass


class Probe:
    """State shared with tests: what the probe saw, and a switch for flaky failures."""

    def __init__(self) -> None:
        self.flaky_calls = 0
        self.fail_first = 0
        self.sleeps_finished = 0
        self.ticks_sent = 0
        self.ticks_stopped = asyncio.Event()

    async def echo(self, req: EchoRequest, ctx: Context) -> EchoResponse:
        return EchoResponse(
            text=req.text,
            n=req.n,
            tenant=ctx.tenant,
            correlation_id=ctx.correlation_id,
            roles=list(ctx.roles),
        )

    async def sleep(self, req: SleepRequest, ctx: Context) -> Empty:
        await asyncio.sleep(req.seconds)
        self.sleeps_finished += 1
        return Empty()

    async def missing(self, req: Empty, ctx: Context) -> Empty:
        raise NotFound("no such thing")

    async def crash(self, req: Empty, ctx: Context) -> Empty:
        raise RuntimeError("secret internal detail /etc/passwd")

    async def flaky(self, req: Empty, ctx: Context) -> Empty:
        self.flaky_calls += 1
        if self.flaky_calls <= self.fail_first:
            raise Unavailable("flaky dependency")
        return Empty()

    async def count(self, req: EchoRequest, ctx: Context) -> AsyncIterator[EchoResponse]:
        for i in range(req.n):
            yield EchoResponse(text=f"{req.text}{i}", n=i)
        if req.text == "boom":
            raise NotFound("stream broke")

    async def ticks(self, req: EchoRequest, ctx: Context) -> AsyncIterator[EchoResponse]:
        """A slow, long stream: a tick every 20 ms, up to ``n``."""
        try:
            for i in range(req.n):
                self.ticks_sent += 1
                yield EchoResponse(text="tick", n=i)
                await asyncio.sleep(0.02)
        finally:
            self.ticks_stopped.set()


def probe_op(
    name: str, request: type[Any], response: type[Any], service: str = "probe", **kw: Any
) -> Operation[Any, Any]:
    """A test-only operation of the probe service (idempotent unless told otherwise)."""
    kw.setdefault("idempotent", True)
    return Operation(service, name, request, response, **kw)


ECHO = probe_op("echo", EchoRequest, EchoResponse)
SLEEP = probe_op("sleep", SleepRequest, Empty)
MISSING = probe_op("missing", Empty, Empty)
CRASH = probe_op("crash", Empty, Empty)
FLAKY = probe_op("flaky", Empty, Empty)
COUNT = probe_op("count", EchoRequest, EchoResponse, streaming=True)
TICKS = probe_op("ticks", EchoRequest, EchoResponse, streaming=True)


def probe_worker(probe: Probe, name: str = "probe", **kwargs: Any) -> Worker:
    ops = (ECHO, SLEEP, MISSING, CRASH, FLAKY, COUNT, TICKS)
    ep = {op.name: op.served_as(name) for op in ops}
    return Worker(
        name,
        endpoints=[
            Endpoint(ep["echo"], probe.echo),
            Endpoint(ep["sleep"], probe.sleep),
            Endpoint(ep["missing"], probe.missing),
            Endpoint(ep["crash"], probe.crash),
            Endpoint(ep["flaky"], probe.flaky),
            Endpoint(ep["count"], probe.count),
            Endpoint(ep["ticks"], probe.ticks),
        ],
        **kwargs,
    )
