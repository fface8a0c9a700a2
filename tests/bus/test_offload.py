"""bus.offload: work in killable processes, stopped at its budget, shared fairly."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from bus import _offload_child, offload
from bus.errors import Internal, InvalidRequest, PayloadTooLarge
from tests import offload_support as fns

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def pool() -> AsyncIterator[offload.Pool]:
    p = offload.Pool("test", 2)
    try:
        yield p
    finally:
        await p.close()


async def test_runs_a_function_in_another_process(pool: offload.Pool) -> None:
    import os

    assert await pool.run(fns.add, 2, b=3) == 5
    assert await pool.run(fns.pid) != os.getpid()


async def test_a_catastrophic_regex_is_stopped_at_its_budget(pool: offload.Pool) -> None:
    started = time.monotonic()
    with pytest.raises(offload.BudgetExceeded, match="matching took longer than 0.5 s") as err:
        await pool.run(fns.catastrophic, 60, budget=0.5, what="matching")
    assert err.value.code == "payload_too_large"
    assert time.monotonic() - started < 30  # stopped, not run to the end (years)
    assert pool.kills == 1


async def test_the_killed_process_is_replaced_at_once(pool: offload.Pool) -> None:
    with pytest.raises(offload.BudgetExceeded):
        await pool.run(fns.spin, 60, budget=0.3)
    assert pool.started == 2  # the replacement starts (and imports) before it is needed
    assert await pool.run(fns.add, 1, 1) == 2


async def test_a_cancelled_caller_kills_the_running_work(pool: offload.Pool) -> None:
    import os

    task = asyncio.create_task(pool.run(fns.spin, 60, budget=120))
    while pool.started < 2:
        await asyncio.sleep(0.05)
    before = set(pool.pids())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.kills == 1
    gone = before - set(pool.pids())
    assert len(gone) == 1  # the process running the work was killed and replaced
    (pid,) = gone
    for _ in range(100):  # nothing keeps burning the CPU for nobody
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"process {pid} still runs")


async def test_the_event_loop_keeps_running_while_work_spins(pool: offload.Pool) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        assert await pool.run(fns.spin, 1.0, budget=30) == "done"
    finally:
        ticker.cancel()
    assert ticks > 20  # a GIL-holding thread would have allowed ~0


async def test_errors_come_back_with_their_type_and_details(pool: offload.Pool) -> None:
    with pytest.raises(InvalidRequest, match="refused x") as err:
        await pool.run(fns.refuse, "x")
    assert err.value.details == {"field": "text"}


async def test_an_exception_that_cannot_be_pickled_becomes_a_runtime_error(
    pool: offload.Pool,
) -> None:
    with pytest.raises(RuntimeError, match="_Odd: 1/2"):
        await pool.run(fns.odd_error)


async def test_an_unpicklable_result_is_a_type_error(pool: offload.Pool) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        await pool.run(fns.unpicklable)


async def test_running_out_of_memory_is_payload_too_large() -> None:
    small = offload.Pool("small", 1, memory_limit=1024**3)
    try:
        with pytest.raises(PayloadTooLarge, match="more memory than the limit of 1024 MiB"):
            await small.run(fns.allocate, 4, what="allocating")
        assert await small.run(fns.add, 1, 2) == 3
    finally:
        await small.close()


async def test_a_crashing_process_is_internal_and_replaced(pool: offload.Pool) -> None:
    with pytest.raises(Internal, match="ended unexpectedly"):
        await pool.run(fns.crash)
    assert await pool.run(fns.add, 1, 2) == 3


async def test_one_key_never_holds_every_process(pool: offload.Pool) -> None:
    # Tenant "a" queues four long jobs (they run one after another on one process);
    # tenant "b" gets the other process meanwhile, not after a's backlog.
    hogs = [asyncio.create_task(pool.run(fns.spin, 4.0, budget=60, key="a")) for _ in range(4)]
    try:
        await asyncio.sleep(0.2)
        assert await pool.run(fns.add, 1, 2, key="b") == 3
        assert sum(t.done() for t in hogs) <= 1, "b waited behind a's backlog"
    finally:
        for task in hogs:
            task.cancel()
        await asyncio.gather(*hogs, return_exceptions=True)


async def test_waiting_keys_are_served_round_robin() -> None:
    single = offload.Pool("single", 1)
    order: list[str] = []

    async def job(key: str) -> None:
        await single.run(fns.spin, 0.05, key=key)
        order.append(key)

    try:
        first = asyncio.create_task(job("a"))
        await asyncio.sleep(0)
        rest = [asyncio.create_task(job(k)) for k in ("a", "a", "a", "b", "c")]
        await asyncio.gather(first, *rest)
    finally:
        await single.close()
    # b and c are not left behind a's backlog.
    assert order.index("b") <= 2 and order.index("c") <= 3


async def test_a_waiter_that_gives_up_leaves_the_queue(pool: offload.Pool) -> None:
    single = offload.Pool("single", 1)
    try:
        hog = asyncio.create_task(single.run(fns.spin, 1.0, key="a"))
        await asyncio.sleep(0.1)
        waiter = asyncio.create_task(single.run(fns.add, 1, 2, key="b"))
        await asyncio.sleep(0.1)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert await hog == "done"
        assert await single.run(fns.add, 2, 2, key="c") == 4
        assert single.kills == 0  # a waiter had no process to kill
    finally:
        await single.close()


async def test_using_stops_the_pools_when_the_last_holder_leaves() -> None:
    async with offload.using():
        async with offload.using():
            assert await offload.run(fns.add, 1, 2, pool="scoped") == 3
            pool = offload.get_pool("scoped")
            assert pool.started == 2  # every process of the pool starts on first use
        assert pool.started == 2  # still held by the outer user
    assert pool.started == 0
    # Used again later, it starts afresh.
    assert await offload.run(fns.add, 2, 2, pool="scoped") == 4
    await offload.shutdown()


def test_the_child_reads_a_reset_connection_as_its_parent_gone() -> None:
    """A parent that closes with unread data resets the socket: the child exits quietly
    (no traceback on the worker's stderr at every shutdown)."""
    child, parent = socket.socketpair()
    try:
        child.sendall(b"R" + bytes(8))  # the parent never reads it ...
        parent.close()  # ... so closing resets the connection
        assert _offload_child._recv_exact(child, 9) is None
    finally:
        child.close()
