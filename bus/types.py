"""Type aliases and protocols shared across the bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

from pydantic import BaseModel

from schemas.context import Context

Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)

#: A request/reply handler: validated request model and context in, response model out.
Handler: TypeAlias = Callable[[Req, Context], Awaitable[Resp]]

#: A streaming handler: yields one response model per chunk.
StreamHandler: TypeAlias = Callable[[Req, Context], AsyncIterator[Resp]]

#: What a JetStream consumer calls for each message: payload model and context in.
JobHandler: TypeAlias = Callable[[Any, Context], Awaitable[None]]

#: nats.micro error headers (https://github.com/nats-io/nats.py nats/micro/request.py).
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"

#: Appended to a streaming request's reply subject by a caller that stops reading.
CANCEL_SUFFIX = ".cancel"
