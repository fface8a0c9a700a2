"""The protobuf envelope, described in code (no ``protoc`` at build time).

The message, in ``.proto`` terms::

    syntax = "proto3";
    package mesh.v1;
    import "google/protobuf/struct.proto";

    message Context {
      string tenant = 1;  string user = 2;  repeated string roles = 3;
      string correlation_id = 4;  string request_id = 5;  int64 deadline = 6;
      string traceparent = 7;  string tracestate = 8;  string stream = 9;
      map<string, string> extra = 15;   // any other string header
    }
    message Envelope {
      uint32 version = 1;               // always 1: the first byte is 0x08
      Context h = 2;
      oneof d {
        bytes msgpack = 3;              // what this codec writes
        google.protobuf.Value value = 4; // accepted from non-Python producers
        bool null = 5;                  // an explicit null payload
      }
    }

Why: the context is typed (any protobuf toolchain reads tenant and deadline), and the
payload keeps the exact types the mesh relies on. ``google.protobuf.Value`` carries every
number as a double and has no bytes, so ``1`` would come back as ``1.0`` and a file's
bytes not at all; a msgpack payload keeps them. Producers in other languages may send
``value`` instead and the reader accepts it. docs/architecture.md has the reasoning.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

_F = descriptor_pb2.FieldDescriptorProto

#: Context fields and their protobuf numbers; the order is the wire order.
CONTEXT_STRINGS = (
    ("tenant", 1),
    ("user", 2),
    ("correlation_id", 4),
    ("request_id", 5),
    ("traceparent", 7),
    ("tracestate", 8),
    ("stream", 9),
)


def _field(msg: Any, name: str, number: int, kind: int, **kw: Any) -> None:
    msg.field.add(
        name=name, number=number, type=kind, label=kw.pop("label", _F.LABEL_OPTIONAL), **kw
    )


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="mesh/v1/envelope.proto",
        package="mesh.v1",
        syntax="proto3",
        dependency=["google/protobuf/struct.proto"],
    )
    ctx = fdp.message_type.add(name="Context")
    for name, number in CONTEXT_STRINGS:
        _field(ctx, name, number, _F.TYPE_STRING)
    _field(ctx, "roles", 3, _F.TYPE_STRING, label=_F.LABEL_REPEATED)
    _field(ctx, "deadline", 6, _F.TYPE_INT64)
    entry = ctx.nested_type.add(name="ExtraEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_STRING)
    _field(
        ctx,
        "extra",
        15,
        _F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".mesh.v1.Context.ExtraEntry",
    )

    env = fdp.message_type.add(name="Envelope")
    env.oneof_decl.add(name="d")
    _field(env, "version", 1, _F.TYPE_UINT32)
    _field(env, "h", 2, _F.TYPE_MESSAGE, type_name=".mesh.v1.Context")
    _field(env, "msgpack", 3, _F.TYPE_BYTES, oneof_index=0)
    _field(env, "value", 4, _F.TYPE_MESSAGE, type_name=".google.protobuf.Value", oneof_index=0)
    _field(env, "null", 5, _F.TYPE_BOOL, oneof_index=0)
    return fdp


_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
_pool.Add(_file())

Envelope: Any = message_factory.GetMessageClass(_pool.FindMessageTypeByName("mesh.v1.Envelope"))
#: Every protobuf envelope starts with field 1 (``version``, varint): tag byte 0x08, which
#: is neither ``{`` (JSON) nor a msgpack map (0x80-0x8f, 0xde, 0xdf).
FIRST_BYTE = 0x08
VERSION = 1
