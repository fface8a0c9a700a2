"""The NATS connection every process uses: it reconnects and never gives up.

``NATS_URL`` may name several servers, comma-separated (a cluster: the client picks one at
random and fails over to the others). Credentials come from ``NATS_USER``/``NATS_PASSWORD``
or from the URL (``nats://user:password@host:4222``); either way they are handed to the
client as options, so servers learned from the cluster's gossip (which carry no
credentials) are reachable too.

A process that connects as a NATS user gets the inbox prefix ``_INBOX.<user>``: the
deployment's permissions (deploy/nats/nats-auth.conf, docs/deploy.md) let each user subscribe
only to its own inboxes, so one service cannot read the replies another receives.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
import structlog
from nats.aio.client import Client as NATS

_log = structlog.get_logger(__name__)

#: nats-py gives up after 60 attempts (~2 minutes) by default; a worker must not.
RECONNECT_FOREVER = -1
CONNECT_TIMEOUT_S = 2.0
RECONNECT_WAIT_S = 1.0
#: nats-py's own default inbox prefix, kept for connections without a user (development).
DEFAULT_INBOX_PREFIX = "_INBOX"


@dataclass(frozen=True)
class Servers:
    """Where to connect and as whom: parsed once from ``NATS_URL`` (+ user/password)."""

    urls: tuple[str, ...]
    user: str | None = None
    password: str | None = None

    @property
    def inbox_prefix(self) -> str:
        """``_INBOX.<user>``: the only inboxes this user may subscribe to."""
        return f"{DEFAULT_INBOX_PREFIX}.{self.user}" if self.user else DEFAULT_INBOX_PREFIX


def parse_servers(url: str, user: str | None = None, password: str | None = None) -> Servers:
    """``"nats://a:4222, nats://b:4222"`` → every URL without credentials, plus the user.

    Explicit ``user``/``password`` win over credentials in a URL; a URL's credentials are
    taken from the first URL that has them.
    """
    urls: list[str] = []
    for part in url.split(","):
        part = part.strip()
        if not part:
            continue
        if "://" not in part:
            part = "nats://" + part
        split = urlsplit(part)
        if split.username is not None and user is None:
            user = unquote(split.username)
            password = unquote(split.password) if split.password is not None else password
        host = split.hostname or ""
        if ":" in host:  # an IPv6 literal keeps its brackets
            host = f"[{host}]"
        netloc = f"{host}:{split.port}" if split.port else host
        urls.append(urlunsplit((split.scheme, netloc, split.path, "", "")))
    if not urls:
        raise ValueError(f"NATS_URL {url!r} names no server; e.g. nats://127.0.0.1:4222")
    if user is not None and not _valid_token(user):
        raise ValueError(f"NATS user {user!r} must be one subject token (letters, digits, -_)")
    return Servers(tuple(urls), user or None, password)


def _valid_token(user: str) -> bool:
    return bool(user) and all(c.isalnum() or c in "-_" for c in user)


async def connect(
    url: str,
    name: str,
    *,
    user: str | None = None,
    password: str | None = None,
    first_attempt_timeout: float | None = 60.0,
) -> NATS:
    """Connect to the servers in ``url``; keep retrying the first connection for
    ``first_attempt_timeout`` s.

    After the first connection, reconnects are unlimited (nats-py buffers publishes
    while reconnecting, up to its pending size).
    """
    servers = parse_servers(url, user, password)

    async def on_error(exc: Exception) -> None:
        _log.warning("nats_error", error=str(exc) or type(exc).__name__)

    async def on_disconnect() -> None:
        _log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        _log.info("nats_reconnected")

    loop = asyncio.get_running_loop()
    give_up = None if first_attempt_timeout is None else loop.time() + first_attempt_timeout
    pause = 0.1
    while True:
        # nats-py itself retries an unreachable cluster forever when reconnects are
        # unlimited, so the first connection's deadline is enforced here.
        left = None if give_up is None else max(give_up - loop.time(), CONNECT_TIMEOUT_S)
        try:
            async with asyncio.timeout(left):
                return await nats.connect(
                    list(servers.urls),
                    name=name,
                    user=servers.user,
                    password=servers.password,
                    inbox_prefix=servers.inbox_prefix,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    reconnect_time_wait=RECONNECT_WAIT_S,
                    max_reconnect_attempts=RECONNECT_FOREVER,
                    allow_reconnect=True,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                )
        except (OSError, nats.errors.NoServersError, TimeoutError) as exc:
            if give_up is not None and loop.time() + pause > give_up:
                raise
            _log.warning("nats_connect_retry", urls=servers.urls, error=type(exc).__name__)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


async def connect_once(
    url: str,
    name: str,
    *,
    user: str | None = None,
    password: str | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> NATS:
    """A short-lived connection for a command (``mesh probe``, ``mesh services``): fails
    within seconds when no server answers, instead of retrying forever."""
    servers = parse_servers(url, user, password)

    async def quiet(exc: Exception) -> None:  # the caller reports the final failure
        _log.debug("nats_error", error=str(exc) or type(exc).__name__)

    return await nats.connect(
        list(servers.urls),
        name=name,
        user=servers.user,
        password=servers.password,
        inbox_prefix=servers.inbox_prefix,
        connect_timeout=timeout,
        error_cb=quiet,
        # nats-py drops a server from its pool only past this many failures (0 would mean
        # "never"): every server gets two short tries, then NoServersError.
        max_reconnect_attempts=1,
        reconnect_time_wait=0.1,
    )
