"""Run CPU-bound or untrusted-input work in killable processes, with a time budget.

A regular expression, a parser or a template render holds the GIL: run on the event loop
(or in a thread) it freezes every request of the worker, and nothing can stop it. Here
the work runs in a small pool of separate processes; when it overruns its budget (or
its caller is cancelled, e.g. at the request's deadline) the process running it is
killed and replaced, and the caller gets a clear error. Example::

    from bus import offload

    async with offload.using(env.settings):       # in the worker's lifespan
        ...
        parsed = await offload.run(
            parse, data, limits,                   # a module-level function and its args
            budget=20.0,                           # seconds, once the work has started
            key=ctx.tenant,                        # fairness: see below
            what="parsing the document",           # names the work in the error message
            pool="ingestion",                      # which pool (one per service)
        )

Rules for the function: it must be importable by name (a module-level function, not a
lambda or closure), and its arguments and result must pickle. Exceptions it raises come
back with their type (``bus.errors`` keep their details), so ``except ParseError`` works
as before. Errors the pool adds itself:

* :class:`BudgetExceeded` (``payload_too_large``): "parsing the document took longer
  than 20 s" — not retryable, so a JetStream job fails at once instead of being
  redelivered to every replica (a poison job);
* ``payload_too_large`` when the work ran out of memory (each process has an
  address-space limit, ``OFFLOAD_MEMORY_LIMIT_MB``);
* ``internal`` when the process died for another reason (a crash in C code).

Fairness: a pool of ``n`` processes lets one ``key`` (a tenant) hold at most ``n - 1`` of
them (``max_per_key``), and serves waiting keys round-robin, so one tenant's hostile
input never takes the whole pool from the others. Pools are named (one per service by
convention) so a flood of slow document parses does not delay prompt renders. Each pool
starts its processes lazily, on first use; :func:`using` (an async context manager,
reference-counted, entered in each worker's lifespan) shuts every pool down when the
last user leaves. Processes run at a lower CPU priority than the workers (``nice``), so
the event loops stay responsive while hostile work burns its budget.

The cost of one call is a pickle round trip over a local socket (~0.1–0.3 ms); the
first call of a process also pays its interpreter start and imports, which are not
charged to the budget. See docs/architecture.md ("Off-loop work").
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import structlog

from bus.errors import Internal, PayloadTooLarge, Unavailable

__all__ = [
    "DEFAULT_BUDGET_S",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_PROCESSES",
    "BudgetExceeded",
    "Pool",
    "get_pool",
    "run",
    "shutdown",
    "using",
]

_log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Processes per pool (the machines this runs on have two cores).
DEFAULT_PROCESSES = 2
#: Budget of a call that does not name one, in seconds.
DEFAULT_BUDGET_S = 10.0
#: Address-space limit of each process, in bytes (0: none).
DEFAULT_MEMORY_LIMIT = 4 * 1024**3
#: Niceness added to the processes: untrusted work yields the CPU to the event loops.
DEFAULT_NICE = 5
#: How long a new process may take to start and import what the call needs.
START_TIMEOUT_S = 120.0
#: How long a process may take to exit on shutdown before it is killed.
STOP_GRACE_S = 2.0

_HEADER = struct.Struct(">cQ")
_BOOT = (
    "import json, os, sys; sys.path[:0] = json.loads(os.environ['MESH_OFFLOAD_PATH']); "
    "from bus._offload_child import main; main()"
)


class BudgetExceeded(PayloadTooLarge):
    """The work took longer than its time budget; its process was killed and replaced."""


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    calls: int = 0
    ready: bool = False
    consumed: bool = False
    """Its ``B`` (started) frame has been read."""

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(OSError):
            self.sock.close()
        # Reap it (a killed child stays a zombie until waited for), off the event loop.
        threading.Thread(target=self.returncode, daemon=True).start()

    def booted(self) -> bool:
        """Has it finished starting (its ``B`` frame is waiting, or was read)?"""
        if self.ready:
            return True
        try:
            self.ready = bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False
        return self.ready

    def returncode(self, timeout: float = 5.0) -> int | None:
        with contextlib.suppress(Exception):
            return self.proc.wait(timeout=timeout)
        return None


def _spawn(memory_limit: int, niceness: int, modules: list[str]) -> _Child:
    parent, child = socket.socketpair()
    try:
        env = dict(os.environ)
        env["MESH_OFFLOAD_PATH"] = json.dumps([p for p in sys.path if isinstance(p, str)])
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _BOOT,
                str(child.fileno()),
                str(memory_limit),
                str(niceness),
                ",".join(modules),
            ],
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    parent.setblocking(False)
    return _Child(proc, parent)


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = await loop.sock_recv_into(sock, view[got:])
        if k == 0:
            raise EOFError
        got += k
    return bytes(buf)


async def _read_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[bytes, bytes]:
    kind, size = _HEADER.unpack(await _recv_exact(loop, sock, _HEADER.size))
    return kind, (await _recv_exact(loop, sock, size) if size else b"")


class Pool:
    """``processes`` killable worker processes shared fairly between keys (tenants)."""

    def __init__(
        self,
        name: str = "default",
        processes: int = DEFAULT_PROCESSES,
        *,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        max_per_key: int | None = None,
        niceness: int = DEFAULT_NICE,
    ) -> None:
        if processes < 1:
            raise ValueError("a pool needs at least one process")
        self.name = name
        self.processes = processes
        self.memory_limit = memory_limit
        self.max_per_key = max_per_key or max(1, processes - 1)
        self.niceness = niceness
        self._children: list[_Child | None] = [None] * processes
        self._free: list[int] = list(range(processes))
        self._running: collections.Counter[str] = collections.Counter()
        # key → its waiters, in arrival order; keys are served round-robin.
        self._waiters: collections.OrderedDict[str, collections.deque[asyncio.Future[int]]] = (
            collections.OrderedDict()
        )
        self.kills = 0
        """Processes killed because their work overran or its caller gave up; tests read it."""
        # Modules of the functions run so far: a new process imports them while it starts,
        # so a replacement is warm before the next call needs it.
        self._modules: dict[str, None] = {}
        self._closing = False
        self._last: collections.OrderedDict[str, int] = collections.OrderedDict()

    # -- public -------------------------------------------------------------------------

    async def run(
        self,
        fn: Callable[P, T],
        /,
        *args: Any,
        budget: float = DEFAULT_BUDGET_S,
        key: str = "",
        what: str = "the work",
        **kwargs: Any,
    ) -> T:
        """``fn(*args, **kwargs)`` in a pool process, stopped after ``budget`` seconds."""
        if budget <= 0:
            raise ValueError("budget must be positive")
        module = getattr(fn, "__module__", None)
        if module and module != "__main__" and module not in self._modules:
            self._modules[module] = None
        if all(c is None for c in self._children):
            self._warm()  # first use: start every process now, in parallel
        body = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        payload = _HEADER.pack(b"C", len(body)) + body
        index = await self._acquire(key)
        try:
            return await self._call(index, payload, budget, what)  # type: ignore[no-any-return]
        finally:
            self._release(index, key)

    async def close(self) -> None:
        """Stop every process (they exit when their socket closes; stragglers are killed).

        The pool can be used again afterwards: processes start anew on demand.
        """
        self._closing = True
        children = [c for c in self._children if c is not None]
        self._children = [None] * self.processes
        for child in children:
            with contextlib.suppress(OSError):
                child.sock.close()
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children:
            while child.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if child.proc.poll() is None:
                child.kill()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(child.proc.wait, 5.0)
        self._closing = False

    def kill_all(self) -> None:
        """Synchronous last resort (interpreter exit)."""
        for child in self._children:
            if child is not None:
                child.kill()
        self._children = [None] * self.processes

    @property
    def started(self) -> int:
        """Processes currently alive (started lazily)."""
        return sum(1 for c in self._children if c is not None and c.proc.poll() is None)

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children if c is not None]

    # -- one call -----------------------------------------------------------------------

    async def _call(self, index: int, payload: bytes, budget: float, what: str) -> Any:
        loop = asyncio.get_running_loop()
        child = self._children[index]
        if child is None or child.proc.poll() is not None:
            child = self._children[index] = self._spawn()
        started = False
        try:
            if not child.consumed:  # the process's first call: wait until it has started
                async with asyncio.timeout(START_TIMEOUT_S):
                    kind, _ = await _read_frame(loop, child.sock)
                if kind != b"B":
                    raise EOFError
                child.consumed = child.ready = True
            await loop.sock_sendall(child.sock, payload)
            async with asyncio.timeout(START_TIMEOUT_S):
                kind, body = await _read_frame(loop, child.sock)
            if kind != b"S":
                return self._outcome(index, child, kind, body, what)
            started = True
            async with asyncio.timeout(budget):
                kind, body = await _read_frame(loop, child.sock)
            child.calls += 1
            return self._outcome(index, child, kind, body, what)
        except TimeoutError:
            self._discard(index, child)
            self.kills += 1
            if not started:
                raise Unavailable(f"a worker process for {what} did not start in time") from None
            _log.warning("offload_overrun", pool=self.name, what=what, budget_s=budget)
            raise BudgetExceeded(f"{what} took longer than {budget:g} s") from None
        except (EOFError, ConnectionError, BrokenPipeError):
            self._discard(index, child)
            code = child.proc.poll()  # None if it has not been reaped yet
            _log.warning("offload_process_died", pool=self.name, what=what, returncode=code)
            raise Internal(f"{what} failed: its worker process ended unexpectedly") from None
        except BaseException:
            # Cancelled (the request's deadline, a stopping worker) or a bug here: the
            # process may still be running the work, so it cannot be reused.
            self._discard(index, child)
            self.kills += 1
            raise

    def _outcome(self, index: int, child: _Child, kind: bytes, body: bytes, what: str) -> Any:
        if kind == b"R":
            return pickle.loads(body)
        if kind == b"E":
            exc = pickle.loads(body)
            if isinstance(exc, MemoryError):
                self._discard(index, child)  # the child exits after this anyway
                raise PayloadTooLarge(
                    f"{what} needs more memory than the limit of {self.memory_limit // 1024**2} MiB"
                ) from None
            raise exc
        if kind == b"F":
            raise RuntimeError(body.decode("utf-8", "replace"))
        self._discard(index, child)
        raise Internal(f"{what} failed: unexpected answer from its worker process")

    def _spawn(self) -> _Child:
        return _spawn(self.memory_limit, self.niceness, list(self._modules))

    def _warm(self) -> None:
        for index, child in enumerate(self._children):
            if child is None:
                self._children[index] = self._spawn()

    def _discard(self, index: int, child: _Child) -> None:
        """Kill ``child`` and start its replacement at once (it warms up meanwhile)."""
        child.kill()
        if self._children[index] is child:
            self._children[index] = None if self._closing else self._spawn()

    # -- fair scheduling ------------------------------------------------------------------

    async def _acquire(self, key: str) -> int:
        if self._free and self._running[key] < self.max_per_key:
            self._running[key] += 1
            return self._take(key)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, collections.deque()).append(future)
        try:
            return await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._release(future.result(), key)  # handed a slot just as we gave up
            else:
                queue = self._waiters.get(key)
                if queue is not None:
                    with contextlib.suppress(ValueError):
                        queue.remove(future)
                    if not queue:
                        del self._waiters[key]
            raise

    def _take(self, key: str) -> int:
        """A free process for ``key``: the one it used last (so a key whose work was
        killed waits for its own replacement to start), else one that has started, else
        any."""
        last = self._last.get(key)
        if last is not None and last in self._free:
            choice = last
        else:
            warm = [i for i in self._free if self._is_warm(i)]
            choice = warm[-1] if warm else self._free[-1]
        self._free.remove(choice)
        self._last[key] = choice
        self._last.move_to_end(key)
        while len(self._last) > 4096:
            self._last.popitem(last=False)
        return choice

    def _is_warm(self, index: int) -> bool:
        child = self._children[index]
        return child is not None and child.booted()

    def _release(self, index: int, key: str) -> None:
        self._running[key] -= 1
        if self._running[key] <= 0:
            del self._running[key]
        self._free.append(index)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free processes to waiting keys, round-robin, within ``max_per_key``."""
        for key in list(self._waiters):
            if not self._free:
                return
            if self._running[key] >= self.max_per_key:
                continue
            queue = self._waiters[key]
            while queue and queue[0].done():  # cancelled waiters
                queue.popleft()
            if queue:
                future = queue.popleft()
                self._running[key] += 1
                future.set_result(self._take(key))
            # Served (or empty): to the back of the round.
            del self._waiters[key]
            if queue:
                self._waiters[key] = queue


# -- the process-wide pools ------------------------------------------------------------

_pools: dict[str, Pool] = {}
_config: dict[str, int] = {
    "processes": DEFAULT_PROCESSES,
    "memory_limit": DEFAULT_MEMORY_LIMIT,
}
_users = 0


def get_pool(name: str = "default") -> Pool:
    """The named pool of this process, created (not yet started) on first use."""
    pool = _pools.get(name)
    if pool is None:
        pool = _pools[name] = Pool(name, _config["processes"], memory_limit=_config["memory_limit"])
    return pool


async def run(
    fn: Callable[P, T],
    /,
    *args: Any,
    budget: float = DEFAULT_BUDGET_S,
    key: str = "",
    what: str = "the work",
    pool: str = "default",
    **kwargs: Any,
) -> T:
    """``fn(*args, **kwargs)`` in a process of the named pool; see the module docstring."""
    return await get_pool(pool).run(fn, *args, budget=budget, key=key, what=what, **kwargs)


async def shutdown() -> None:
    """Stop every pool's processes now (they restart on the next call)."""
    for pool in list(_pools.values()):
        await pool.close()


@contextlib.asynccontextmanager
async def using(settings: Any = None) -> AsyncIterator[None]:
    """Hold the process-wide pools for a worker's lifetime; the last holder stops them.

    ``settings`` (a :class:`bus.settings.Settings`) sizes pools created afterwards:
    ``offload_processes`` and ``offload_memory_limit_mb``.
    """
    global _users
    if settings is not None:
        _config["processes"] = int(getattr(settings, "offload_processes", DEFAULT_PROCESSES))
        mb = getattr(settings, "offload_memory_limit_mb", None)
        if mb is not None:
            _config["memory_limit"] = int(mb) * 1024**2
    _users += 1
    try:
        yield
    finally:
        _users -= 1
        if _users == 0:
            await shutdown()


@atexit.register
def _kill_at_exit() -> None:
    for pool in _pools.values():
        pool.kill_all()
