"""Cache Service contracts: ``cache.{set,get,delete,invalidate}.request``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.operations import Operation
from schemas.routes import Route

# Namespaces, keys and tags end up inside Redis keys: keep them printable and bounded.
# No ":" in names: a key is `t:{tenant}:{namespace}:{key}` and must parse one way only.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/@+=-]{1,128}$")]
# No whitespace or control characters. The whitespace is spelled out (Unicode White_Space)
# rather than `\s`, which JSON-Schema tools read as ASCII-only while Python and pydantic read
# it as Unicode: one pattern, one meaning, in every engine.
Key = Annotated[
    str,
    StringConstraints(
        pattern=r"^[^\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a"
        r"\u2028\u2029\u202f\u205f\u3000]{1,512}$"
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CacheSetRequest(_Request):
    namespace: Name = "default"
    key: Key
    value: Any
    ttl_seconds: int | None = Field(default=None, ge=1, le=365 * 24 * 3600)
    tags: list[Name] = Field(default_factory=list, max_length=32)


class CacheSetResponse(BaseModel):
    ok: bool = True


class CacheGetRequest(_Request):
    namespace: Name = "default"
    key: Key


class CacheGetResponse(BaseModel):
    hit: bool
    value: Any = None


class CacheDeleteRequest(_Request):
    namespace: Name = "default"
    keys: list[Key] = Field(min_length=1, max_length=1000)


class CacheDeleteResponse(BaseModel):
    deleted: int


class CacheInvalidateRequest(_Request):
    # The "one target" rule below, stated in the JSON schema too (OpenAPI clients and
    # schemathesis generate from it).
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["namespace"], "properties": {"namespace": {"type": "string"}}},
                {"required": ["tags"], "properties": {"tags": {"type": "array", "minItems": 1}}},
            ]
        }
    )

    namespace: Name | None = None
    tags: list[Name] | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _one_target(self) -> CacheInvalidateRequest:
        if self.namespace is None and not self.tags:
            raise ValueError("give a namespace, tags, or both")
        return self


class CacheInvalidateResponse(BaseModel):
    invalidated: int


SET = Operation(
    "cache", "set", CacheSetRequest, CacheSetResponse, idempotent=True, description="store a value"
)
GET = Operation(
    "cache", "get", CacheGetRequest, CacheGetResponse, idempotent=True, description="read a value"
)
DELETE = Operation(
    "cache",
    "delete",
    CacheDeleteRequest,
    CacheDeleteResponse,
    idempotent=True,
    description="delete keys",
)
INVALIDATE = Operation(
    "cache",
    "invalidate",
    CacheInvalidateRequest,
    CacheInvalidateResponse,
    idempotent=True,
    description="drop a namespace or everything tagged",
)

#: Namespaces and tags starting with this belong to the mesh's own services (the gateway's
#: response cache, RAG's query cache, agent runs): the public operations above refuse
#: them, and only the internal operations below, which have no HTTP route and which the
#: bridge's NATS user may not call, read or write them. A cached answer that drives
#: actions (tool calls, a run's result) is therefore only ever written by its service.
RESERVED_PREFIX = "_"

INTERNAL_SET = Operation(
    "cache",
    "internal_set",
    CacheSetRequest,
    CacheSetResponse,
    idempotent=True,
    description="store a value in a service's reserved namespace (services only)",
)
INTERNAL_GET = Operation(
    "cache",
    "internal_get",
    CacheGetRequest,
    CacheGetResponse,
    idempotent=True,
    description="read a value of a service's reserved namespace (services only)",
)
INTERNAL_INVALIDATE = Operation(
    "cache",
    "internal_invalidate",
    CacheInvalidateRequest,
    CacheInvalidateResponse,
    idempotent=True,
    description="drop a reserved namespace or reserved tags (services only)",
)
OPERATIONS = (SET, GET, DELETE, INVALIDATE, INTERNAL_SET, INTERNAL_GET, INTERNAL_INVALIDATE)

ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/v1/cache/set", SET, summary="Store a value", tags=("cache",)),
    Route("POST", "/api/v1/cache/get", GET, summary="Read a value", tags=("cache",)),
    Route("POST", "/api/v1/cache/delete", DELETE, summary="Delete keys", tags=("cache",)),
    Route(
        "POST",
        "/api/v1/cache/invalidate",
        INVALIDATE,
        summary="Drop a namespace or everything tagged",
        tags=("cache",),
    ),
)
