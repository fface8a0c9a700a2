"""``Mesh``: the typed client for the whole mesh (docs/client.md)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping

from bus.client import Client
from bus.codec import Codec, CodecName
from bus.connection import connect as nats_connect
from bus.context import DEFAULT_TIMEOUT_S
from mesh.client._base import DynamicService, call_context
from mesh.client._services import SERVICE_CLASSES, Services
from schemas.context import Context

#: How long :meth:`Mesh.connect` keeps trying to reach NATS before giving up.
CONNECT_TIMEOUT_S = 10.0


class Mesh(Services):
    """Every service of the mesh as typed attributes: ``mesh.gateway.generate(...)``.

    Each call runs under a fresh context (``tenant``, ``user``, ``roles``, a deadline
    ``timeout`` seconds away, a new correlation id unless one is given), or, given
    ``context`` (inside a worker's handler), under a child of it, so the correlation id
    and deadline of the user's action carry on. Calls go through one
    :class:`bus.client.Client`: per-attempt timeouts from the deadline, retries of
    ``unavailable``/``timeout`` only for idempotent operations, a circuit breaker per
    subject, and the worker's error raised as its :mod:`bus.errors` class.

    ``served_as`` maps a service to the name that answers for it (a stand-in, as
    ``Operation.served_as``), e.g. ``{"gateway": "fakegw"}``.
    """

    def __init__(
        self,
        client: Client,
        *,
        tenant: str | None = None,
        user: str | None = None,
        roles: Iterable[str] = (),
        timeout: float = DEFAULT_TIMEOUT_S,
        correlation_id: str | None = None,
        context: Context | None = None,
        served_as: Mapping[str, str] | None = None,
    ) -> None:
        if context is None and not tenant:
            raise ValueError("a tenant is required (every request is tenant-scoped)")
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.client = client
        self.tenant = context.tenant if context is not None else tenant
        self.user = user if context is None else context.user
        self.roles = tuple(roles)
        self.timeout = timeout
        self.correlation_id = correlation_id
        self.parent = context
        self.served_as = dict(served_as or {})
        for name, cls in SERVICE_CLASSES.items():
            setattr(self, name, cls(self, self.served_as.get(name)))

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        tenant: str,
        user: str | None = None,
        roles: Iterable[str] = (),
        timeout: float = DEFAULT_TIMEOUT_S,
        correlation_id: str | None = None,
        codec: CodecName = "msgpack",
        name: str = "mesh-client",
        connect_timeout: float = CONNECT_TIMEOUT_S,
        served_as: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Mesh]:
        """Connect to NATS at ``url``; drain the connection on leaving the block."""
        nc = await nats_connect(url, name=name, first_attempt_timeout=connect_timeout)
        try:
            client = Client(nc, codec=Codec(codec))
            yield cls(
                client,
                tenant=tenant,
                user=user,
                roles=roles,
                timeout=timeout,
                correlation_id=correlation_id,
                served_as=served_as,
            )
        finally:
            if not nc.is_closed:
                await nc.drain()

    def with_options(
        self,
        *,
        tenant: str | None = None,
        user: str | None = None,
        roles: Iterable[str] | None = None,
        timeout: float | None = None,
        correlation_id: str | None = None,
    ) -> Mesh:
        """The same connection, breakers and stand-ins with other call settings."""
        return type(self)(
            self.client,
            tenant=tenant or self.tenant,
            user=user or self.user,
            roles=self.roles if roles is None else roles,
            timeout=timeout or self.timeout,
            correlation_id=correlation_id or self.correlation_id,
            context=self.parent if tenant is None else None,
            served_as=self.served_as,
        )

    def context(self) -> Context:
        """The context of the next call (a new request id and deadline each time)."""
        return call_context(
            parent=self.parent,
            tenant=self.tenant,
            user=self.user,
            roles=self.roles,
            timeout=self.timeout,
            correlation_id=self.correlation_id,
        )

    def service(self, name: str) -> DynamicService:
        """Any declared service by name, untyped (e.g. one newer than this client module)."""
        return DynamicService(self, name, self.served_as.get(name))

    def __repr__(self) -> str:
        return f"<Mesh tenant={self.tenant!r} services={', '.join(SERVICE_CLASSES)}>"


def services() -> list[str]:
    """The services the typed client was generated for."""
    return list(SERVICE_CLASSES)
