"""The bridge's connections to the mesh, opened in its lifespan and read per request.

Routes receive this holder when the app is built, before the lifespan has connected:
they read ``client``/``js`` on each request through :meth:`Connections.bus_client` and
:meth:`Connections.jetstream`, which answer ``unavailable`` (never an ``AssertionError``)
if a request arrives outside the lifespan.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bus.client import Client
from bus.errors import Unavailable


@dataclass
class Connections:
    nc: NATS | None = None
    js: JetStreamContext | None = None
    client: Client | None = None

    def bus_client(self) -> Client:
        if self.client is None:
            raise Unavailable("the bridge is not connected to NATS")
        return self.client

    def jetstream(self) -> JetStreamContext:
        if self.js is None:
            raise Unavailable("the bridge is not connected to JetStream")
        return self.js
