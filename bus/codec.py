"""Envelope codecs: msgpack (default), JSON and protobuf, recognised from the first byte
(docs/architecture.md, "Envelope").

An envelope is ``{"h": {context headers}, "d": payload}``. Decoding is bounded (size,
nesting, container lengths) and anything that is not a valid envelope raises
:class:`~bus.errors.InvalidRequest` — never another exception.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import functools
import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from bus import _protobuf as _pb
from bus.errors import InvalidRequest, PayloadTooLarge

CodecName = Literal["msgpack", "json", "protobuf"]
CODECS: tuple[CodecName, ...] = ("msgpack", "json", "protobuf")

#: Default decoding limits; NATS's own max_payload (nats.conf) is the outer bound.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_CONTAINER = 100_000

_MSGPACK_FIRST = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_container: int = DEFAULT_MAX_CONTAINER


def _plain(value: Any) -> Any:
    """msgpack ``default`` hook: the few non-native types models dump to."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return _plain(value)


class Codec:
    """Encodes with one codec, decodes either (so mixed processes interoperate)."""

    def __init__(self, name: CodecName = "msgpack", limits: Limits | None = None) -> None:
        if name not in CODECS:
            raise ValueError(f"CODEC_TYPE must be one of {', '.join(CODECS)}, not {name!r}")
        self.name = name
        self.limits = limits or Limits()
        n = self.limits.max_container
        self._unpack_opts = dict(
            raw=False,
            strict_map_key=True,
            max_str_len=self.limits.max_bytes,
            max_bin_len=self.limits.max_bytes,
            max_array_len=n,
            max_map_len=n,
            max_ext_len=0,
        )
        # Bound once: spreading the options into each call costs more than the unpacking
        # of a small envelope.
        self._unpackb = functools.partial(msgpack.unpackb, **self._unpack_opts)

    def encode(self, headers: dict[str, Any], data: Any) -> bytes:
        """Encode an envelope; data the codec cannot carry is ``InvalidRequest``.

        (Integers beyond 64 bits, lone surrogates, unknown types, nesting past msgpack's
        limit all raise different exceptions in the libraries.)
        """
        envelope = {"h": headers, "d": data}
        try:
            if self.name == "json":
                return json.dumps(envelope, default=_json_default, separators=(",", ":")).encode()
            if self.name == "protobuf":
                return _pb_encode(headers, data)
            return msgpack.packb(envelope, default=_plain, use_bin_type=True)
        except (TypeError, ValueError, OverflowError, UnicodeError) as exc:
            raise InvalidRequest(f"payload cannot be encoded: {type(exc).__name__}") from None

    def encode_reply(self, headers: dict[str, Any], data: Any) -> bytes:
        """:meth:`encode` a worker's answer, refusing one that a caller decoding with the
        same limits would reject as malformed (``PayloadTooLarge``): more bytes than
        ``max_bytes``, or more values than ``max_container`` / deeper than ``max_depth``.
        The walk over the values runs only for bodies longer than ``max_container`` bytes
        (every value takes at least one byte), so small answers cost nothing more."""
        body = self.encode(headers, data)
        limits = self.limits
        if len(body) > limits.max_bytes:
            raise PayloadTooLarge(
                f"the answer is {len(body)} bytes, more than one message carries"
                f" ({limits.max_bytes}); ask for less (filters, a smaller page or window)"
            )
        if len(body) > limits.max_container:
            try:
                _check_shape(data, limits.max_depth, limits.max_container)
            except InvalidRequest as exc:
                raise PayloadTooLarge(
                    f"the answer is more than one message carries ({exc.message});"
                    " ask for less (filters, a smaller page or window)"
                ) from None
        return body

    def decode(self, body: bytes) -> tuple[dict[str, Any], Any]:
        """Return ``(headers, data)`` of an envelope or raise ``InvalidRequest``."""
        if len(body) > self.limits.max_bytes:
            raise PayloadTooLarge(f"body of {len(body)} bytes exceeds {self.limits.max_bytes}")
        if not body:
            raise InvalidRequest("empty body: expected an envelope")
        first = body[0]
        try:
            if first == 0x7B:  # "{"
                envelope = json.loads(body)
            elif first in _MSGPACK_FIRST:
                envelope = self._unpackb(body)
            elif first == _pb.FIRST_BYTE:
                envelope = self._pb_decode(body)
            else:
                raise InvalidRequest("body is not a msgpack, JSON or protobuf envelope")
        except InvalidRequest:
            raise
        except (
            ValueError,
            TypeError,
            RecursionError,
            msgpack.UnpackException,
            DecodeError,
        ) as exc:
            # json.JSONDecodeError and UnicodeDecodeError are ValueErrors; msgpack raises
            # ExtraData/FormatError/StackError/ValueError for truncated or hostile input.
            raise InvalidRequest(f"undecodable body: {type(exc).__name__}") from None
        if not isinstance(envelope, dict) or "d" not in envelope:
            raise InvalidRequest("body is not an envelope: expected a map with 'h' and 'd'")
        headers = envelope.get("h")
        if headers is None:
            headers = {}
        elif not isinstance(headers, dict):
            raise InvalidRequest("envelope 'h' must be a map")
        data = envelope["d"]
        if data and (data.__class__ is dict or data.__class__ is list):  # else nothing nests
            _check_shape(data, self.limits.max_depth, self.limits.max_container)
        return headers, data

    def _pb_decode(self, body: bytes) -> dict[str, Any]:
        """A protobuf envelope as the same ``{"h", "d"}`` map the other codecs give."""
        msg = _pb.Envelope.FromString(body)
        if msg.version != _pb.VERSION:
            raise InvalidRequest(f"unsupported protobuf envelope version {msg.version}")
        h = msg.h
        headers: dict[str, Any] = {
            name: getattr(h, name) for name, _ in _STRINGS if getattr(h, name)
        }
        if h.roles:
            headers["roles"] = list(h.roles)
        if h.deadline:
            headers["deadline"] = h.deadline
        for key, value in h.extra.items():
            headers.setdefault(key, value)
        kind = msg.WhichOneof("d")
        if kind == "msgpack":
            data = self._unpackb(msg.msgpack)
        elif kind == "value":
            data = json_format.MessageToDict(msg.value)
        elif kind == "null":
            data = None
        else:
            raise InvalidRequest("protobuf envelope carries no payload 'd'")
        return {"h": headers, "d": data}


_STRINGS = _pb.CONTEXT_STRINGS
_STRING_NAMES = frozenset(name for name, _ in _STRINGS)


def _pb_encode(headers: dict[str, Any], data: Any) -> bytes:
    msg = _pb.Envelope(version=_pb.VERSION)
    h = msg.h
    for key, value in headers.items():
        if value is None:
            continue
        if key in _STRING_NAMES:
            setattr(h, key, value)
        elif key == "roles":
            h.roles.extend(value)
        elif key == "deadline":
            h.deadline = value
        elif isinstance(value, str):
            h.extra[key] = value
        else:
            raise TypeError(f"header {key!r} is not a string")
    if data is None:
        msg.null = True
    else:
        msg.msgpack = msgpack.packb(data, default=_plain, use_bin_type=True)
    return bytes(msg.SerializeToString())


def _check_shape(value: Any, max_depth: int, max_items: int) -> None:
    """Reject payloads nested deeper than ``max_depth`` or holding too many items overall."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise InvalidRequest(f"payload nested deeper than {max_depth} levels")
        seen += len(item)
        if seen > max_items:
            raise InvalidRequest(f"payload holds more than {max_items} items")
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
