"""The OpenAPI 3.1 document, generated from the route table and the pydantic schemas.

Path parameters come from the path template, the other request fields become query
parameters on GET/DELETE and the JSON body otherwise (the bridge merges all three into
the request model). Every operation documents its problem+json errors and the bearer
security scheme.

The routes the bridge serves itself are described here too: the OpenAI-compatible
``/v1/chat/completions`` (JSON, or OpenAI's SSE framing with ``stream: true``),
``/v1/embeddings`` and ``/v1/models`` (gateway_bridge/openai_routes.py; their bodies are
OpenAI's wire shapes, modelled below from schemas/openai_compat.py, and their errors
OpenAI's ``{"error": {...}}``), and the multipart upload route
``/api/v1/ingestion/upload`` (gateway_bridge/upload.py).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway_bridge.problems import PROBLEM_MEDIA_TYPE, Problem
from schemas.gateway import MAX_EMBED_TEXTS, GenerateRequest, ToolCall
from schemas.ingestion import MAX_BATCH, UPLOAD_PATH, SubmitResponse
from schemas.routes import Route

REF_TEMPLATE = "#/components/schemas/{model}"
BODYLESS_METHODS = frozenset({"GET", "DELETE"})
#: Smallest deadline a client may ask for with ``X-Request-Timeout`` (seconds).
MIN_REQUEST_TIMEOUT_S = 0.5
_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")

_ERRORS: dict[str, tuple[str, str]] = {
    # status: (components.responses name, description)
    "400": ("InvalidRequest", "The request does not match the schema (`invalid_request`)."),
    "401": ("Unauthenticated", "Missing or invalid bearer token (`unauthenticated`)."),
    "413": ("PayloadTooLarge", "The body exceeds the bridge's limit (`payload_too_large`)."),
    "429": ("RateLimited", "The tenant's or user's quota is used up (`rate_limited`)."),
    "503": ("Unavailable", "No worker answers, or a dependency is down (`unavailable`)."),
    "504": ("Timeout", "The deadline passed (`timeout`)."),
    "default": ("Problem", "Any other error the service answered, as problem details."),
}

_ID_HEADERS = {
    "X-Correlation-ID": {
        "description": "The user action's id (yours when valid, else generated).",
        "required": True,
        "schema": {"type": "string"},
    },
    "X-Request-ID": {
        "description": "This HTTP request's id.",
        "required": True,
        "schema": {"type": "string"},
    },
}

_RATE_HEADERS = {
    name: {"description": text, "schema": {"type": kind}}
    for name, text, kind in (
        ("RateLimit-Limit", "Requests the binding bucket holds.", "integer"),
        ("RateLimit-Remaining", "Requests left in the binding bucket.", "integer"),
        ("RateLimit-Reset", "Seconds until the binding bucket is full again.", "integer"),
        ("RateLimit-Policy", "The binding quota: `<limit>;w=<seconds>`.", "string"),
    )
}


# ---------------------------------------------------------------- OpenAI wire shapes
# What schemas/openai_compat.py accepts and answers, as models for the document only.


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = None


class ChatCompletionRequest(GenerateRequest):
    """OpenAI's chat completions body: the gateway's generate fields, plus OpenAI's
    streaming switch; ``user``, ``metadata``, ``store``, ``service_tier`` and
    ``parallel_tool_calls`` are accepted and ignored; any other parameter is a 400."""

    stream: bool | None = Field(default=None, description="answer as Server-Sent Events")
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="only 1")
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    logprobs: bool | None = Field(default=None, description="only false")
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None


class ChatCompletionMessage(BaseModel):
    role: str = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None


class ChatCompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    """``chat.completion``, as OpenAI answers it."""

    id: str
    object: str = Field(description='"chat.completion"')
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: ChatCompletionUsage
    system_fingerprint: None = None


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings body (text inputs only)."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str] = Field(description=f"a text or 1-{MAX_EMBED_TEXTS} texts")
    model: str | None = Field(default=None, max_length=128)
    dimensions: int | None = Field(default=None, ge=1, le=65_536)
    encoding_format: str | None = Field(
        default=None, description="float (default) or base64 (little-endian float32)"
    )
    user: str | None = None


class EmbeddingData(BaseModel):
    object: str = Field(description='"embedding"')
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Embeddings(BaseModel):
    object: str = Field(description='"list"')
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingsUsage


class ModelData(BaseModel):
    id: str
    object: str = Field(description='"model"')
    created: int
    owned_by: str


class Models(BaseModel):
    object: str = Field(description='"list"')
    data: list[ModelData]


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """An error of the ``/v1`` routes, in OpenAI's shape."""

    error: OpenAIErrorBody


class UploadForm(BaseModel):
    """``multipart/form-data``: ``collection_id`` first, then the files."""

    collection_id: str = Field(description="the collection the files go into (before files)")
    metadata: str = Field(
        default="{}", description="a JSON object, applied to every file's document"
    )
    file: list[bytes] = Field(
        min_length=1,
        max_length=MAX_BATCH,
        description="one part per file; the file name becomes the source id",
    )


def path_params(path: str) -> list[str]:
    return _PATH_PARAM.findall(path)


def operation_id(route: Route) -> str:
    return route.subject.removesuffix(".request").replace(".", "_")


def build_openapi(
    routes: Iterable[Route], *, title: str = "Motadata AI mesh", version: str = "0.1.0"
) -> dict[str, Any]:
    routes = list(routes)
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(Problem, "serialization")]
    wanted += [(m, "validation") for m in (ChatCompletionRequest, EmbeddingsRequest, UploadForm)]
    wanted += [
        (m, "serialization")
        for m in (ChatCompletion, Embeddings, Models, OpenAIError, SubmitResponse)
    ]
    for r in routes:
        wanted.append((r.request, "validation"))
        if r.response is not None:
            wanted.append((r.response, "serialization"))
    refs, doc = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF_TEMPLATE)
    schemas: dict[str, Any] = doc.get("$defs", {})

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    def definition(model: type[BaseModel]) -> dict[str, Any]:
        name = refs[(model, "validation")]["$ref"].rsplit("/", 1)[-1]
        found: dict[str, Any] = schemas[name]
        return found

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(
            route, ref, definition(route.request)
        )
    paths.update(_openai_paths(ref))
    paths[UPLOAD_PATH] = {"post": _upload_operation(ref)}
    paths["/healthz"] = {"get": _ops_operation("healthz", "The process is alive.")}
    paths["/readyz"] = {
        "get": _ops_operation("readyz", "NATS is connected and JetStream answers.", not_ready=True)
    }

    problem = ref(Problem, "serialization")
    responses = {
        name: _problem_response(description, problem) for name, description in _ERRORS.values()
    }
    responses["Unauthenticated"]["headers"]["WWW-Authenticate"] = {
        "description": "RFC 6750 challenge",
        "schema": {"type": "string"},
    }
    responses["RateLimited"]["headers"].update(_RATE_HEADERS)
    responses["RateLimited"]["headers"]["Retry-After"] = {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer"},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "The HTTP edge of the mesh: each route forwards to a NATS subject. "
                "Tenant, user and roles come from the bearer JWT only; errors are "
                "`application/problem+json` (RFC 9457)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearerAuth": []}],
    }


def _operation(route: Route, ref: Any, model_schema: dict[str, Any]) -> dict[str, Any]:
    in_path = path_params(route.path)
    properties: dict[str, Any] = model_schema.get("properties", {})
    required = set(model_schema.get("required", []))
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": properties.get(name, {})}
        for name in in_path
    ]
    op: dict[str, Any] = {
        "operationId": operation_id(route),
        "summary": route.summary or route.subject,
        "description": f"Forwards to NATS subject `{route.subject}`."
        + (" Answers Server-Sent Events." if route.streaming else ""),
        "tags": list(route.tags),
    }
    if route.method in BODYLESS_METHODS:
        for name, schema in properties.items():
            if name not in in_path:
                parameters.append(
                    {"name": name, "in": "query", "required": name in required, "schema": schema}
                )
    else:
        body = model_schema
        if in_path:
            body = copy.deepcopy(model_schema)
            for name in in_path:
                body.get("properties", {}).pop(name, None)
            body["required"] = [n for n in body.get("required", []) if n not in in_path]
        else:
            body = ref(route.request, "validation")
        op["requestBody"] = {
            "required": _needs_body(route),
            "content": {"application/json": {"schema": body}},
        }
    parameters += _header_params()
    op["parameters"] = parameters
    if route.streaming:
        ok_content: dict[str, Any] = {
            "text/event-stream": _sse(
                "`data:` events each holding one chunk as JSON, then "
                "`event: end`; a failure mid-stream is `event: error` with problem details."
            )
        }
    else:
        schema = ref(route.response, "serialization") if route.response else {}
        ok_content = {"application/json": {"schema": schema}}
    responses: dict[str, Any] = {
        str(route.status_code): {
            "description": "Success",
            "headers": {**_ID_HEADERS, **_RATE_HEADERS},
            "content": ok_content,
        }
    }
    for status, (name, _) in _ERRORS.items():
        responses[status] = {"$ref": f"#/components/responses/{name}"}
    op["responses"] = responses
    return op


def _header_params() -> list[dict[str, Any]]:
    return [
        {
            "name": "X-Correlation-ID",
            "in": "header",
            "required": False,
            "description": "Kept when it matches `^[A-Za-z0-9._:@/+=-]{1,128}$`, "
            "otherwise replaced by a generated id.",
            "schema": {"type": "string"},
        },
        {
            "name": "X-Request-Timeout",
            "in": "header",
            "required": False,
            "description": "Deadline in seconds for this request (default per route; "
            "values above the bridge's maximum are capped).",
            "schema": {"type": "number", "minimum": MIN_REQUEST_TIMEOUT_S},
        },
    ]


def _sse(description: str) -> dict[str, Any]:
    # One schema per event, as tools that parse SSE (schemathesis) read it; the chunk
    # schema is carried as JSON in `data`.
    return {
        "schema": {
            "type": "object",
            "properties": {
                "event": {"type": "string"},
                "id": {"type": "string"},
                "data": {"type": "string", "contentMediaType": "application/json"},
                "retry": {"type": "integer"},
            },
        },
        "description": description,
    }


def _openai_paths(ref: Any) -> dict[str, dict[str, Any]]:
    """``/v1/...`` (gateway_bridge/openai_routes.py): OpenAI's bodies and error shape."""
    error = {"application/json": {"schema": ref(OpenAIError, "serialization")}}
    errors: dict[str, Any] = {}
    for status, (_, description) in _ERRORS.items():
        errors[status] = {
            "description": description.replace("problem details", "an OpenAI error object"),
            "headers": dict(_ID_HEADERS),
            "content": error,
        }

    def operation(
        op_id: str, summary: str, ok: dict[str, Any], body: type[BaseModel] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "operationId": op_id,
            "summary": summary,
            "description": "OpenAI-compatible: point the official `openai` client at "
            "`<bridge>/v1` with the JWT as its API key. Errors are OpenAI error objects.",
            "tags": ["openai"],
            "parameters": _header_params(),
            "responses": {
                "200": {
                    "description": "Success",
                    "headers": {**_ID_HEADERS, **_RATE_HEADERS},
                    "content": ok,
                },
                **errors,
            },
        }
        if body is not None:
            out["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(body, "validation")}},
            }
        return out

    def json_of(model: type[BaseModel]) -> dict[str, Any]:
        return {"application/json": {"schema": ref(model, "serialization")}}

    chat_ok = {
        **json_of(ChatCompletion),
        "text/event-stream": _sse(
            "With `stream: true`: OpenAI's framing, `data:` lines each holding one "
            "`chat.completion.chunk`, then `data: [DONE]`; a failure mid-stream is one "
            "`data:` line with an OpenAI error object."
        ),
    }
    return {
        "/v1/chat/completions": {
            "post": operation(
                "openai_chat_completions",
                "Chat completion (OpenAI-compatible), streamed with `stream: true`",
                chat_ok,
                ChatCompletionRequest,
            )
        },
        "/v1/embeddings": {
            "post": operation(
                "openai_embeddings",
                "Embeddings (OpenAI-compatible)",
                json_of(Embeddings),
                EmbeddingsRequest,
            )
        },
        "/v1/models": {
            "get": operation(
                "openai_models", "The configured model aliases (OpenAI-compatible)", json_of(Models)
            )
        },
    }


def _upload_operation(ref: Any) -> dict[str, Any]:
    """``POST /api/v1/ingestion/upload`` (gateway_bridge/upload.py)."""
    responses: dict[str, Any] = {
        "202": {
            "description": "Stored and queued: one job per file (follow them at "
            "`/api/v1/ingestion/jobs/{job_id}`)",
            "headers": {**_ID_HEADERS, **_RATE_HEADERS},
            "content": {"application/json": {"schema": ref(SubmitResponse, "serialization")}},
        }
    }
    for status, (name, _) in _ERRORS.items():
        responses[status] = {"$ref": f"#/components/responses/{name}"}
    return {
        "operationId": "ingestion_upload",
        "summary": "Upload files into the object store and queue them for ingestion",
        "description": "`multipart/form-data`, streamed: each file part goes straight into "
        "the object store (at most `UPLOAD_MAX_BYTES` each, 413 above), then one "
        "`ingestion.submit.request` queues a job per file. Whatever fails, the files "
        "stored by this request are deleted before the answer.",
        "tags": ["ingestion"],
        "parameters": _header_params(),
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": ref(UploadForm, "validation"),
                    "encoding": {"file": {"contentType": "application/octet-stream"}},
                }
            },
        },
        "responses": responses,
    }


def _needs_body(route: Route) -> bool:
    """Whether the request model refuses an empty object (required fields or validators)."""
    try:
        route.request.model_validate(dict.fromkeys(path_params(route.path), "x"))
    except ValidationError:
        return True
    return False


def _ops_operation(name: str, summary: str, *, not_ready: bool = False) -> dict[str, Any]:
    status_schema = {
        "type": "object",
        "properties": {"status": {"type": "string"}},
        "required": ["status"],
    }
    responses: dict[str, Any] = {
        "200": {
            "description": summary,
            "headers": dict(_ID_HEADERS),
            "content": {"application/json": {"schema": status_schema}},
        }
    }
    if not_ready:
        responses["503"] = {"$ref": "#/components/responses/Unavailable"}
    return {
        "operationId": name,
        "summary": summary,
        "tags": ["operations"],
        "security": [],
        "responses": responses,
    }


def _problem_response(description: str, problem: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": dict(_ID_HEADERS),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": problem}},
    }
