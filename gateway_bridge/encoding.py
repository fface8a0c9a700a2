"""JSON for HTTP bodies: what workers answer (msgpack) made JSON (bytes become base64)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

from bus.errors import InvalidRequest


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


#: json.dumps builds a new encoder on every call given any option; this one is built once.
_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=False)


def dumps(data: Any) -> bytes:
    return _ENCODER.encode(data).encode()


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"{name} is not valid JSON")


#: json.loads builds a new decoder on every call given any option; this one is built once.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(body: bytes) -> Any:
    """Parse a request body; anything that is not strict JSON is ``InvalidRequest``."""
    try:
        # What json.loads does with bytes: detect UTF-8/16/32, then decode the text.
        return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidRequest(f"body is not valid JSON: {type(exc).__name__}") from None
