"""The runtime under the typed client: one call path for every operation.

The per-service classes in :mod:`mesh.client._services` are generated from the operation
declarations (``schemas/<service>.py`` ``OPERATIONS``) and only forward to
:meth:`Service._call` / :meth:`Service._stream` with their :class:`Operation`; everything
that matters (request validation, context, deadline, retry policy, breaker, typed errors)
happens here and in :class:`bus.client.Client`.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Generic, Protocol

from pydantic import ValidationError

from bus.client import Client
from bus.context import child, new_context
from bus.errors import InvalidRequest
from bus.worker import validation_details
from schemas.context import Context
from schemas.operations import Operation, Req, Resp


class Mesh(Protocol):
    """What a service needs of the :class:`mesh.client.Mesh` it is bound to (a Protocol,
    so this module does not import the one that imports it)."""

    client: Client

    def context(self) -> Context: ...


def build_request(op: Operation[Req, Any], request: Any, fields: Mapping[str, Any]) -> Req:
    """The request model from either a model instance (or plain dict) or keyword fields.

    Validated here, before anything is sent, and refused as the worker would refuse it:
    :class:`~bus.errors.InvalidRequest` with the field errors in ``details``.
    """
    if request is not None and fields:
        raise TypeError(f"{op.subject}: pass a request model or keyword fields, not both")
    if isinstance(request, op.request):
        return request
    if request is not None and not isinstance(request, Mapping):
        raise TypeError(f"{op.subject} takes a {op.request.__name__}, not {type(request).__name__}")
    try:
        return op.request.model_validate(dict(request) if request is not None else fields)
    except ValidationError as exc:
        raise InvalidRequest(
            f"invalid {op.service}.{op.name} request", validation_details(exc)
        ) from None


class Service:
    """The operations of one service, bound to a :class:`~mesh.client.Mesh`.

    Generated subclasses add one typed method per operation; :meth:`op` and
    :meth:`__getitem__` reach any operation by name (e.g. one added after the client
    module was generated).
    """

    #: Service name in the declarations (``schemas/<name>.py``).
    name: str = ""
    #: The service's declared operations, by name.
    operations: Mapping[str, Operation[Any, Any]] = {}

    def __init__(self, mesh: Mesh, served_as: str | None = None) -> None:
        self._mesh = mesh
        #: The service name that answers (a stand-in's, see ``Operation.served_as``).
        self.served_as = served_as or self.name

    def _bind(self, op: Operation[Req, Resp]) -> Operation[Req, Resp]:
        return op.served_as(self.served_as)

    async def _call(
        self, op: Operation[Req, Resp], request: Any, fields: Mapping[str, Any]
    ) -> Resp:
        req = build_request(op, request, fields)
        return await self._mesh.client.call(self._bind(op), req, self._mesh.context())

    def _stream(
        self, op: Operation[Req, Resp], request: Any, fields: Mapping[str, Any]
    ) -> AsyncGenerator[Resp, None]:
        req = build_request(op, request, fields)
        return self._mesh.client.stream(self._bind(op), req, self._mesh.context())

    def __getitem__(self, name: str) -> OperationCall[Any, Any]:
        try:
            return OperationCall(self, self.operations[name])
        except KeyError:
            raise AttributeError(f"{self.name} has no operation {name!r}") from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.served_as}: {', '.join(self.operations)}>"


class OperationCall(Generic[Req, Resp]):
    """One operation bound to a service namespace, for operations reached by name.

    ``await call(req)`` / ``await call(**fields)`` for request/reply operations;
    ``call.stream(...)`` for streaming ones.
    """

    def __init__(self, service: Service, op: Operation[Req, Resp]) -> None:
        self.service = service
        self.op = op

    async def __call__(
        self, request: Req | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> Resp:
        if self.op.streaming:
            raise TypeError(f"{self.op.subject} streams: use .stream(...)")
        return await self.service._call(self.op, request, fields)

    def stream(
        self, request: Req | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> AsyncGenerator[Resp, None]:
        return self.service._stream(self.op, request, fields)


class DynamicService(Service):
    """A service known only at run time: its operations by attribute, untyped.

    ``mesh.service("llmops").list_events(...)`` works as soon as ``schemas/llmops.py``
    declares its operations; regenerate the client (``python -m mesh.client.codegen``)
    to get the typed ``mesh.llmops``.
    """

    def __init__(self, mesh: Mesh, name: str, served_as: str | None = None) -> None:
        self.name = name
        self.operations = operations_of(name)
        super().__init__(mesh, served_as)

    def __getattr__(self, name: str) -> OperationCall[Any, Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]


def operations_of(service: str) -> dict[str, Operation[Any, Any]]:
    """The operations ``schemas/<service>.py`` declares, by name."""
    try:
        module = importlib.import_module(f"schemas.{service}")
    except ModuleNotFoundError:
        raise LookupError(f"no schemas module declares the {service!r} service") from None
    ops = getattr(module, "OPERATIONS", None)
    if not ops:
        raise LookupError(f"schemas.{service} declares no OPERATIONS")
    return {op.name: op for op in ops}


def call_context(
    *,
    parent: Context | None,
    tenant: str | None,
    user: str | None,
    roles: tuple[str, ...],
    timeout: float,
    correlation_id: str | None,
) -> Context:
    """A context for one call: a child of ``parent`` (inside a handler), else a new one."""
    if parent is not None:
        return child(parent, timeout=timeout)
    return new_context(
        tenant, user=user, roles=roles, correlation_id=correlation_id, timeout=timeout
    )
