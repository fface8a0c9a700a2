"""One Lua script over one pipelined Redis connection: the rate limiter's hot path.

Every HTTP request makes one script call, so its cost matters: redis-py spends ~90 µs of
CPU per call (pool checkout, retry wrapper, health check, observability hooks), while
writing commands as they come on one connection and matching replies in order (Redis
answers a connection in order) costs ~15 µs. Encoding and parsing are hiredis's
(``hiredis.pack_command``, ``hiredis.Reader``), the C parser redis-py itself uses.

A call that gets no reply within ``timeout`` fails with :class:`TimeoutError` and closes
the connection (its reply may still come, and would answer the wrong caller); a lost
connection fails every pending call with :class:`ConnectionError`; the next call
reconnects. Deadlines are watched by one timer per connection, not one per call: replies
come in order, so only the oldest pending call can be the first to time out (a timer per
call, as ``asyncio.timeout`` sets, costs about as much as the rest of the call).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

CONNECT_TIMEOUT_S = 1.0


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self._reader = hiredis.Reader()
        self._timeout = timeout
        # Pending calls in the order their replies will come: (waiter, loop time deadline).
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._transport: Any = None  # asyncio's or uvloop's transport (not a subclass)
        self._outgoing: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while self._waiting:
            reply = self._reader.gets()
            if reply is False:
                return
            waiter = self._waiting.popleft()[0]
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            waiter = self._waiting.popleft()[0]
            if not waiter.done():
                waiter.set_exception(ConnectionError("redis connection lost"))

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Send one command; the future gets its reply, or fails after ``timeout``."""
        if self.closed or self._transport is None:
            raise ConnectionError("redis connection closed")
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiting.append((waiter, loop.time() + self._timeout))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout, self._check_deadlines)
        # Commands issued in one event-loop turn leave in one write (one syscall).
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(hiredis.pack_command(args))
        return waiter

    def _flush(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        if not self.closed and self._transport is not None:
            self._transport.write(data)

    def _check_deadlines(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        waiter, deadline = self._waiting[0]
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._watchdog = loop.call_at(deadline, self._check_deadlines)
            return
        if not waiter.done():
            waiter.set_exception(TimeoutError("redis did not answer in time"))
        self.close()  # its reply may still come and answer the wrong caller: start over

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()  # connection_lost fails whatever is pending


class RedisScript:
    """``await script(keys, args)`` runs the Lua ``source`` (EVALSHA, EVAL on NOSCRIPT)."""

    def __init__(self, url: str, source: str, *, timeout: float) -> None:
        options = parse_url(url)
        if "path" in options:
            raise ValueError("the rate limiter needs a TCP redis:// or rediss:// URL")
        self._host = options.get("host", "localhost")
        self._port = int(options.get("port", 6379))
        self._db = int(options.get("db", 0))
        self._username = options.get("username")
        self._password = options.get("password")
        self._ssl = options.get("connection_class") is SSLConnection
        self._source = source
        self._sha: str | None = None
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def __call__(self, keys: list[str], args: list[str]) -> Any:
        protocol = await self._connected()
        if self._sha is None:
            self._sha = await protocol.call("SCRIPT", "LOAD", self._source)
        reply = await protocol.call("EVALSHA", self._sha, len(keys), *keys, *args)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            # Redis restarted or was flushed: run the source once, load it again next time.
            self._sha = None
            reply = await protocol.call("EVAL", self._source, len(keys), *keys, *args)
        if isinstance(reply, hiredis.ReplyError):
            raise ConnectionError(f"redis script failed: {reply}")
        return reply

    async def ping(self) -> None:
        reply = await (await self._connected()).call("PING")
        if reply not in (b"PONG", "PONG"):
            raise ConnectionError(f"unexpected PING reply {reply!r}")

    async def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self._timeout),
                    self._host,
                    self._port,
                    ssl=ssl.create_default_context() if self._ssl else None,
                )
            try:
                if self._password is not None:
                    auth = (self._username, self._password) if self._username else (self._password,)
                    await self._expect_ok(protocol, "AUTH", *auth)
                if self._db:
                    await self._expect_ok(protocol, "SELECT", self._db)
            except BaseException:
                protocol.close()
                raise
            self._protocol = protocol
            return protocol

    async def _expect_ok(self, protocol: _Protocol, *args: Any) -> None:
        reply = await protocol.call(*args)
        if isinstance(reply, hiredis.ReplyError):
            raise ConnectionError(f"redis refused {args[0]}: {reply}")
