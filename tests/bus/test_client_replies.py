"""The client's request/reply inbox: each reply reaches its own caller, late ones nobody."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from bus.client import Client
from bus.codec import Codec
from bus.context import new_context
from bus.errors import Timeout


@pytest.fixture
async def slow_echo(env):
    """A plain NATS responder that answers each envelope after ``d["seconds"]``."""
    subject = f"late{uuid.uuid4().hex[:8]}.echo.request"
    codec = Codec()

    async def answer(msg):
        _, data = codec.decode(msg.data)
        await asyncio.sleep(data["seconds"])
        await env.nc.publish(msg.reply, codec.encode({}, data))

    async def on_msg(msg):
        asyncio.get_running_loop().create_task(answer(msg))

    sub = await env.nc.subscribe(subject, cb=on_msg)
    yield subject
    await sub.unsubscribe()


async def test_a_late_reply_does_not_answer_the_next_request(env, slow_echo):
    client = Client(env.nc)
    with pytest.raises(Timeout):
        await client.request(slow_echo, {"seconds": 0.5, "n": 1}, new_context("t", timeout=0.2))
    # Pending while the first reply arrives (at 0.5 s): it must get its own answer.
    second = await client.request(slow_echo, {"seconds": 0.6, "n": 2}, new_context("t"))
    assert second == {"seconds": 0.6, "n": 2}
    assert client._replies._waiting == {}  # nothing left behind


async def test_concurrent_requests_each_get_their_own_reply(env, slow_echo):
    client = Client(env.nc)
    answers = await asyncio.gather(
        *(
            client.request(slow_echo, {"seconds": (i % 5) / 100, "n": i}, new_context("t"))
            for i in range(200)
        )
    )
    assert [a["n"] for a in answers] == list(range(200))
    assert client._replies._waiting == {}
