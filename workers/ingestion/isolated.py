"""Parsing in a killable process with a time budget (a stand-in for a shared process
pool): each call runs ``fn(*args, **kw)`` in a child forked from a ``forkserver`` that has
the parsers imported already, and the child is killed when the budget runs out or the
caller is cancelled. A thread could not be stopped, and ``re``, pypdf and onnxruntime
hold the GIL or the CPU for as long as a hostile file makes them.

Cost per call: a fork from the preloaded server (~10-30 ms) plus, for OCR, building the
engine in the child (~1 s); results and errors come back pickled (``ParseError`` keeps
its message).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
from collections.abc import Callable
from typing import Any, TypeVar

from bus.errors import Internal, PayloadTooLarge, Unavailable

T = TypeVar("T")

#: Modules the fork server imports once, so each child starts with them loaded.
PRELOAD = ["workers.ingestion.parsing", "workers.ingestion.ocr", "pypdf", "PIL.Image"]
#: Time a child may take to start before its budget begins.
START_ALLOWANCE_S = 30.0

_context: Any = None


class BudgetExceeded(PayloadTooLarge):
    """The work took longer than its budget; its process was killed."""


def _context_once() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(conn: multiprocessing.connection.Connection, fn: Any, args: Any, kw: Any) -> None:
    conn.send(("started", None))
    try:
        result = ("ok", fn(*args, **kw))
    except Exception as exc:  # sent back whole: the caller re-raises it
        result = ("error", exc)
    try:
        conn.send(result)
    except Exception as exc:  # an unpicklable result or error
        conn.send(("error", Internal(f"the result could not be sent back ({type(exc).__name__})")))
    conn.close()


async def run(fn: Callable[..., T], *args: Any, budget: float, what: str, **kw: Any) -> T:
    """``fn(*args, **kw)`` in a new process, killed after ``budget`` seconds."""
    ctx = _context_once()
    loop = asyncio.get_running_loop()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, kw), daemon=True)
    await loop.run_in_executor(None, proc.start)  # may start the fork server: not on the loop
    child.close()
    try:
        try:
            kind, value = await _receive(loop, parent, START_ALLOWANCE_S, what)
        except TimeoutError:
            raise Unavailable(f"a process for {what} did not start in time") from None
        try:
            kind, value = await _receive(loop, parent, budget, what)
        except TimeoutError:
            raise BudgetExceeded(f"{what} took longer than {budget:g} s") from None
    finally:
        if proc.is_alive():
            proc.kill()
        await loop.run_in_executor(None, proc.join, 5.0)
        parent.close()
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


async def _receive(
    loop: asyncio.AbstractEventLoop,
    conn: multiprocessing.connection.Connection,
    timeout: float,
    what: str,
) -> tuple[str, Any]:
    ready = asyncio.Event()
    loop.add_reader(conn.fileno(), ready.set)
    try:
        async with asyncio.timeout(timeout):
            await ready.wait()
    finally:
        loop.remove_reader(conn.fileno())
    try:
        return conn.recv()  # type: ignore[no-any-return]
    except (EOFError, OSError):
        raise Internal(f"{what} failed: its process ended unexpectedly") from None
