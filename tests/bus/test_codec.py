import datetime as dt
import json
import random

import msgpack
import pytest

from bus._protobuf import Envelope
from bus.codec import Codec, Limits
from bus.errors import InvalidRequest, PayloadTooLarge


def _pb(**h: str) -> bytes:
    return Codec("protobuf").encode(h, {"a": 1})


PAYLOADS = [
    {"a": 1, "b": [1, 2.5, None, True], "c": {"nested": "é✓"}},
    [],
    "text",
    None,
    {"blob": b"\x00\xffbytes"},
]


@pytest.mark.parametrize("name", ["msgpack", "json", "protobuf"])
@pytest.mark.parametrize("payload", PAYLOADS[:4])
def test_round_trip(name, payload):
    codec = Codec(name)
    h = {"tenant": "t1", "correlation_id": "c1"}
    assert codec.decode(codec.encode(h, payload)) == (h, payload)


@pytest.mark.parametrize("writer", ["msgpack", "json", "protobuf"])
@pytest.mark.parametrize("reader", ["msgpack", "json", "protobuf"])
def test_codecs_interoperate(writer, reader):
    body = Codec(writer).encode({"tenant": "t"}, {"x": [1, "two"]})
    assert Codec(reader).decode(body) == ({"tenant": "t"}, {"x": [1, "two"]})


def test_bytes_are_bin_in_msgpack_and_protobuf_and_base64_in_json():
    assert Codec("msgpack").decode(Codec().encode({}, b"\x00\x01"))[1] == b"\x00\x01"
    assert Codec().decode(Codec("protobuf").encode({}, b"\x00\x01"))[1] == b"\x00\x01"
    assert Codec("json").decode(Codec("json").encode({}, b"\x00\x01"))[1] == "AAE="


def test_datetimes_travel_as_rfc3339():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    for name in ("msgpack", "json", "protobuf"):
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
        # protobuf: truncated, wrong version, no payload, a payload that is not msgpack,
        # a wire type that does not match, and a length prefix far past the body.
        _pb(tenant="t")[:-1],
        Envelope(version=2, null=True).SerializeToString(),
        Envelope(version=1).SerializeToString(),
        Envelope(version=1, msgpack=b"\xc1").SerializeToString(),
        b"\x08\x01\x12\x05\x0d\x01\x02\x03\x04",
        b"\x08\x01\x1a\xff\xff\xff\xff\x0f",
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


@pytest.mark.parametrize("first", [None, 0x08])
def test_random_bytes_never_raise_anything_but_invalid_request(first):
    rng = random.Random(7)
    codec = Codec()
    for _ in range(2000):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
        if first is not None:  # past the sniff, into the protobuf parser
            body = bytes([first, 1]) + body
        try:
            codec.decode(body)
        except InvalidRequest:
            pass


def test_protobuf_limits_apply_to_the_payload():
    codec = Codec(limits=Limits(max_bytes=10_000, max_depth=5, max_container=100))
    deep: object = 1
    for _ in range(10):
        deep = [deep]
    with pytest.raises(InvalidRequest, match="deeper"):
        codec.decode(Codec("protobuf").encode({}, deep))
    with pytest.raises(InvalidRequest):
        codec.decode(Codec("protobuf").encode({}, list(range(500))))
    with pytest.raises(PayloadTooLarge):
        codec.decode(Codec("protobuf").encode({}, "x" * 20_000))


def test_protobuf_context_is_typed_and_a_value_payload_is_accepted():
    h = {"tenant": "t", "roles": ["a", "b"], "deadline": 1_800_000_000_000, "stream": "end"}
    raw = Envelope.FromString(Codec("protobuf").encode(h, {"k": 1}))
    assert (raw.h.tenant, list(raw.h.roles), raw.h.deadline) == ("t", ["a", "b"], 1_800_000_000_000)
    # A producer in another language may send the payload as google.protobuf.Value.
    other = Envelope(version=1)
    other.value.struct_value.update({"x": "y", "n": [1, 2]})
    other.h.tenant = "t"
    assert Codec().decode(other.SerializeToString()) == (
        {"tenant": "t"},
        {"x": "y", "n": [1.0, 2.0]},
    )


def test_unknown_codec_name_is_refused():
    with pytest.raises(ValueError, match="CODEC_TYPE"):
        Codec("xml")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("msgpack", 2**70),
        ("msgpack", "\ud800"),
        ("msgpack", object()),
        ("json", object()),
        ("protobuf", 2**70),
        ("protobuf", object()),
    ],
)
def test_values_the_codec_cannot_carry_are_invalid_request(name, value):
    with pytest.raises(InvalidRequest, match="cannot be encoded"):
        Codec(name).encode({}, {"v": value})
