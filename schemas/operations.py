"""One declaration per operation: subject, request and response models, retry policy.

Each service module declares its operations once, e.g. ``schemas.cache.GET``, and every
party uses that object: the worker's endpoint (``Endpoint(cache.GET, handler)``), the
bridge's route table (``Route("POST", "/api/v1/cache/get", cache.GET)``) and every caller
(``await client.call(cache.GET, req, ctx)``). Subject, response type, idempotency and
streaming therefore cannot drift apart, and mypy checks that a handler takes the
operation's request model and returns its response model.

How to add an operation end to end is shown in docs/architecture.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from pydantic import BaseModel

Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)

#: The services of the mesh (docs/architecture.md, "Subjects"). Any snake_case name is
#: accepted, so a stand-in (a test's scripted gateway) can serve an operation under its own.
SERVICES = frozenset(
    {"agent", "rag", "gateway", "ml", "cache", "prompt", "ingestion", "promptgen", "llmops"}
)
_TOKEN = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Operation(Generic[Req, Resp]):
    """A request/reply operation answered on ``<service>.<name>.request``.

    ``response`` is the reply model, or for a ``streaming`` operation the model of each
    chunk. ``idempotent`` operations may be retried on ``unavailable``/``timeout``; a
    paid or state-changing call (generation, creation) must say ``False``, and then no
    caller retries it.
    """

    service: str
    name: str
    request: type[Req]
    response: type[Resp]
    idempotent: bool = False
    streaming: bool = False
    description: str = ""
    subject: str = field(init=False)

    def __post_init__(self) -> None:
        for token in (self.service, self.name):
            if not _TOKEN.match(token):
                raise ValueError(f"service and operation must be snake_case tokens: {token!r}")
        object.__setattr__(self, "subject", f"{self.service}.{self.name}.request")

    def served_as(self, service: str) -> Operation[Req, Resp]:
        """The same operation answered by another service name (a configured stand-in)."""
        return replace(self, service=service) if service != self.service else self
