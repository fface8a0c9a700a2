"""The mesh's error hierarchy: one class per error code (docs/architecture.md, "Errors").

Each class carries its wire ``code``, the HTTP ``status`` the bridge answers with (also
sent in the ``Nats-Service-Error-Code`` header) and the problem ``title``: this module is
the one list of the codes; everything else derives from :data:`BY_CODE`.

::

    MeshError
    ├── InvalidRequest        400 invalid_request
    ├── Unauthenticated       401 unauthenticated
    ├── Forbidden             403 forbidden
    ├── NotFound              404 not_found
    ├── Conflict              409 conflict
    ├── PayloadTooLarge       413 payload_too_large
    ├── RateLimited           429 rate_limited
    ├── Internal              500 internal
    ├── UpstreamError         502 upstream_error
    └── RetryableError        (retried for idempotent operations; trips the breaker)
        ├── Unavailable       503 unavailable
        └── Timeout           504 timeout

Errors cross the wire as ``{"code", "message", "details"}`` and :func:`from_body`
rebuilds the same class on the other side.
"""

from __future__ import annotations

from typing import Any, ClassVar

from schemas.errors import ErrorBody, ErrorCode


class MeshError(Exception):
    """Root of every error a mesh call can raise."""

    code: ClassVar[ErrorCode] = "internal"
    status: ClassVar[int] = 500
    """The HTTP status the bridge answers with."""
    title: ClassVar[str] = "Internal error"
    """The RFC 9457 problem ``title``."""

    def __init__(self, message: str = "", details: Any = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def body(self) -> ErrorBody:
        return ErrorBody(code=self.code, message=self.message, details=self.details)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles with its details (bus.offload sends errors back from its processes).
        return (type(self), (self.message, self.details), self.__dict__)


class InvalidRequest(MeshError):
    code = "invalid_request"
    status = 400
    title = "Invalid request"


class Unauthenticated(MeshError):
    code = "unauthenticated"
    status = 401
    title = "Unauthenticated"


class Forbidden(MeshError):
    code = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(MeshError):
    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(MeshError):
    code = "conflict"
    status = 409
    title = "Conflict"


class PayloadTooLarge(MeshError):
    code = "payload_too_large"
    status = 413
    title = "Payload too large"


class RateLimited(MeshError):
    code = "rate_limited"
    status = 429
    title = "Rate limited"

    @property
    def retry_after(self) -> float | None:
        if isinstance(self.details, dict):
            value = self.details.get("retry_after")
            if isinstance(value, int | float):
                return float(value)
        return None


class Internal(MeshError):
    code = "internal"
    status = 500
    title = "Internal error"


class UpstreamError(MeshError):
    code = "upstream_error"
    status = 502
    title = "Upstream error"


class RetryableError(MeshError):
    """A failure that may pass: retried for idempotent operations, counted by breakers."""


class Unavailable(RetryableError):
    code = "unavailable"
    status = 503
    title = "Service unavailable"


class Timeout(RetryableError):
    code = "timeout"
    status = 504
    title = "Timeout"


#: Every error class by its wire code.
BY_CODE: dict[str, type[MeshError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        Unauthenticated,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        RateLimited,
        Internal,
        UpstreamError,
        Unavailable,
        Timeout,
    )
}


def from_body(body: Any) -> MeshError:
    """Rebuild the typed error from a wire body; anything unrecognisable is ``Internal``."""
    if not isinstance(body, dict):
        return Internal("malformed error reply")
    cls = BY_CODE.get(str(body.get("code")), Internal)
    message = body.get("message")
    return cls(message if isinstance(message, str) else cls.code, body.get("details"))


def translate(exc: BaseException) -> MeshError:
    """Map a library exception met at a boundary onto the error contract.

    Connection-level failures of Postgres, Redis and sockets become ``Unavailable``
    (retryable); timeouts become ``Timeout``; values Postgres cannot store (SQLSTATE
    class 22) become ``InvalidRequest``; anything else is a bug: ``Internal``,
    with a message that never leaks internals.
    """
    if isinstance(exc, MeshError):
        return exc
    import asyncpg
    import redis.exceptions as redis_errors

    if isinstance(exc, redis_errors.TimeoutError | TimeoutError):
        return Timeout("a dependency did not answer in time")
    unavailable = (
        redis_errors.ConnectionError,  # BusyLoadingError is one too
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
        asyncpg.exceptions.InsufficientResourcesError,  # too many connections
        ConnectionError,
        OSError,
    )
    if isinstance(exc, unavailable):
        return Unavailable("a dependency is unavailable")
    if isinstance(exc, asyncpg.exceptions.DataError):
        # SQLSTATE class 22: the value itself cannot be stored or compared (a NUL byte in
        # text, a number out of range): the caller's input, not a bug.
        return InvalidRequest("a value in the request cannot be stored (e.g. NUL characters)")
    return Internal("internal error")
