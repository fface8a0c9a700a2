import datetime as dt
import json
import random

import msgpack
import pytest

from bus.codec import Codec, Limits
from bus.errors import InvalidRequest, PayloadTooLarge

PAYLOADS = [
    {"a": 1, "b": [1, 2.5, None, True], "c": {"nested": "é✓"}},
    [],
    "text",
    None,
    {"blob": b"\x00\xffbytes"},
]


@pytest.mark.parametrize("name", ["msgpack", "json"])
@pytest.mark.parametrize("payload", PAYLOADS[:4])
def test_round_trip(name, payload):
    codec = Codec(name)
    h = {"tenant": "t1", "correlation_id": "c1"}
    assert codec.decode(codec.encode(h, payload)) == (h, payload)


@pytest.mark.parametrize(("writer", "reader"), [("msgpack", "json"), ("json", "msgpack")])
def test_codecs_interoperate(writer, reader):
    body = Codec(writer).encode({"tenant": "t"}, {"x": [1, "two"]})
    assert Codec(reader).decode(body) == ({"tenant": "t"}, {"x": [1, "two"]})


def test_bytes_are_bin_in_msgpack_and_base64_in_json():
    assert Codec("msgpack").decode(Codec().encode({}, b"\x00\x01"))[1] == b"\x00\x01"
    assert Codec("json").decode(Codec("json").encode({}, b"\x00\x01"))[1] == "AAE="


def test_datetimes_travel_as_rfc3339():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    for name in ("msgpack", "json"):
        _, data = Codec(name).decode(Codec(name).encode({}, {"at": when}))
        assert data == {"at": "2026-01-02T03:04:05+00:00"}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x01garbage",
        b"[1,2,3]",
        b"{not json",
        b'{"h": {}}',
        b'{"h": 3, "d": 1}',
        msgpack.packb([1, 2]),
        msgpack.packb({"h": {}}),
        msgpack.packb({"h": {}, "d": 1})[:-1],
        b'{"h":{},"d":' + b"[" * 5000 + b"]" * 5000 + b"}",
        msgpack.packb({1: 2, "d": 3}),
    ],
)
def test_hostile_bodies_are_invalid_request(body):
    with pytest.raises(InvalidRequest):
        Codec().decode(body)


def test_limits_on_depth_items_and_size():
    codec = Codec(limits=Limits(max_bytes=10_000, max_depth=5, max_container=100))
    deep: object = 1
    for _ in range(10):
        deep = [deep]
    with pytest.raises(InvalidRequest, match="deeper"):
        codec.decode(json.dumps({"h": {}, "d": deep}).encode())
    with pytest.raises(InvalidRequest):
        codec.decode(msgpack.packb({"h": {}, "d": list(range(500))}))
    with pytest.raises(PayloadTooLarge):
        codec.decode(b"{" + b" " * 20_000 + b"}")


def test_random_bytes_never_raise_anything_but_invalid_request():
    rng = random.Random(7)
    codec = Codec()
    for _ in range(2000):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
        try:
            codec.decode(body)
        except InvalidRequest:
            pass


def test_unknown_codec_name_is_refused():
    with pytest.raises(ValueError, match="CODEC_TYPE"):
        Codec("xml")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"),
    [("msgpack", 2**70), ("msgpack", "\ud800"), ("msgpack", object()), ("json", object())],
)
def test_values_the_codec_cannot_carry_are_invalid_request(name, value):
    with pytest.raises(InvalidRequest, match="cannot be encoded"):
        Codec(name).encode({}, {"v": value})
