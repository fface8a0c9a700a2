"""The JSON schema a model is asked to follow, and local validation of its answer.

**Validation** is the Agent Service's own contract: :class:`schemas.agent.AgentCreateRequest`
or :class:`schemas.agent.ToolCreateRequest` (plus, for tools, the rules ``create_tool``
applies: a Draft 2020-12 argument schema of at most 16 KiB, fixed arguments the built-in
takes, not a built-in's name). The answer is size-capped before parsing
(``PROMPTGEN_MAX_ANSWER_CHARS``), so parsing and validating it inline is bounded work.

**The generation schema** is that contract narrowed to what this tenant has: tool names,
collection ids, template names and model aliases become enums, numbers become presets
within the policy, free-form maps (``capabilities``) are left out. Every document valid
under it is valid under the contract (``tests/test_promptgen_units.py`` checks this), and
a grammar-constrained local model (llama.cpp) can only write existing references. String
lengths and regex patterns are left to local validation: llama.cpp builds ``maxLength`` as
nested optional rules, which made generation ten times slower in a measurement here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema
from pydantic import BaseModel, ValidationError

from schemas.agent import AgentCreateRequest, BuiltinImplementation, ToolCreateRequest
from schemas.promptgen import SpecKind
from workers.promptgen.catalogue import Catalogue
from workers.promptgen.settings import PromptgenConfig

MAX_PARAMETERS_BYTES = 16 * 1024
MAX_ERRORS = 12
MODELS: dict[str, type[BaseModel]] = {"agent": AgentCreateRequest, "tool": ToolCreateRequest}

STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 40, 50)
TOKEN_BUDGETS = (10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)
TIMEOUTS = (30, 60, 120, 300, 600, 1200, 1800, 3600)
TEMPERATURES = (0, 0.2, 0.5, 0.7, 1)
REPLY_TOKENS = (256, 512, 1024, 2048, 4096, 8192, 16384)
ARG_TYPES = ("string", "integer", "number", "boolean")


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An object in OpenAI's strict shape: every property required, nothing else allowed."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _enum(values: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    return {"enum": list(values)}


def _strings(values: list[str], max_items: int) -> dict[str, Any]:
    if not values:
        return {"type": "array", "items": {"type": "string"}, "maxItems": 0}
    return {"type": "array", "items": _enum(values), "maxItems": max_items}


def agent_schema(cat: Catalogue, config: PromptgenConfig) -> dict[str, Any]:
    tools = sorted(cat.tools)
    n = min(config.max_tools, 8)
    return _obj(
        {
            "name": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "system_prompt": {"type": "string", "minLength": 1},
            "tools": _strings(tools, n),
            "rag_collections": _strings(sorted(cat.collections), 8),
            "approval_required": _strings(tools, n),
            "llm_model": _nullable(_enum(list(cat.models))) if cat.models else {"type": "null"},
            "parameters": _obj(
                {
                    "temperature": _nullable(_enum(TEMPERATURES)),
                    "max_tokens": _nullable(
                        _enum([v for v in REPLY_TOKENS if v <= config.max_reply_tokens])
                    ),
                }
            ),
            "limits": _obj(
                {
                    "max_steps": _enum([v for v in STEPS if v <= config.max_steps]),
                    "token_budget": _enum(
                        [v for v in TOKEN_BUDGETS if v <= config.max_token_budget]
                    ),
                    "timeout_seconds": _enum(
                        [v for v in TIMEOUTS if v <= config.max_timeout_seconds]
                    ),
                }
            ),
            "memory": _obj(
                {"recall": {"type": "boolean"}, "recall_top_k": _enum(list(range(1, 11)))}
            ),
        }
    )


def _builtin_branch(kind: str, parameters: dict[str, Any], cat: Catalogue) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name, sub in (parameters.get("properties") or {}).items():
        if name == "collection_ids":
            props[name] = _strings(sorted(cat.collections), 8)
        elif name == "name" and kind == "prompt_render":
            props[name] = _enum(sorted(cat.templates)) if cat.templates else {"type": "string"}
        elif isinstance(sub, dict) and sub.get("type") in ("string", "integer", "number"):
            props[name] = {"type": sub["type"]}
        elif isinstance(sub, dict) and "enum" in sub:
            props[name] = _enum(sub["enum"])
        elif isinstance(sub, dict) and sub.get("type") in ("object", "array", "boolean"):
            props[name] = {"type": sub["type"]}
    return _obj(
        {
            "kind": _enum(["builtin"]),
            "builtin": _enum([kind]),
            "arguments": _obj(props, required=[]),
        }
    )


def tool_schema(cat: Catalogue, config: PromptgenConfig) -> dict[str, Any]:
    argument = _obj({"type": _enum(ARG_TYPES), "description": {"type": "string"}})
    branches = [
        _builtin_branch(name, info.parameters, cat) for name, info in sorted(cat.builtins.items())
    ]
    if cat.templates:
        branches.append(
            _obj(
                {
                    "kind": _enum(["llm"]),
                    "prompt": _obj(
                        {
                            "name": _enum(sorted(cat.templates)),
                            "label": _nullable({"type": "string"}),
                            "version": _nullable({"type": "integer"}),
                        }
                    ),
                    "model": _nullable(_enum(list(cat.models))) if cat.models else {"type": "null"},
                    "temperature": _nullable(_enum(TEMPERATURES)),
                    "max_tokens": _nullable(
                        _enum([v for v in REPLY_TOKENS if v <= config.max_reply_tokens])
                    ),
                }
            )
        )
    implementation: dict[str, Any] = (
        {"anyOf": branches} if branches else {"type": "object"}  # nothing known: let it fail
    )
    return _obj(
        {
            "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
            "description": {"type": "string", "minLength": 1},
            "parameters": _obj(
                {
                    "type": _enum(["object"]),
                    "properties": {"type": "object", "additionalProperties": argument},
                    "required": {"type": "array", "items": {"type": "string"}},
                }
            ),
            "implementation": implementation,
            "requires_approval": {"type": "boolean"},
        }
    )


def generation_schema(kind: SpecKind, cat: Catalogue, config: PromptgenConfig) -> dict[str, Any]:
    return agent_schema(cat, config) if kind == "agent" else tool_schema(cat, config)


def is_strict(schema: Any) -> bool:
    """Whether ``schema`` is in OpenAI's strict subset (closed objects, all required)."""
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            props = schema.get("properties")
            if props is None or schema.get("additionalProperties") is not False:
                return False
            if set(schema.get("required", [])) != set(props):
                return False
        subs = [*(schema.get("properties") or {}).values(), *(schema.get("anyOf") or [])]
        if isinstance(schema.get("items"), dict):
            subs.append(schema["items"])
        return all(is_strict(s) for s in subs)
    return True


# ---------------------------------------------------------------- validation


@dataclass(frozen=True)
class Parsed:
    spec: dict[str, Any] | None
    errors: list[str]


def _strip_fence(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        if t.rstrip().endswith("```"):
            t = t.rstrip()[:-3]
    return t.strip()


def _pydantic_errors(exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors(include_url=False)[:MAX_ERRORS]:
        where = ".".join(str(p) for p in e["loc"]) or "(root)"
        out.append(f"{where}: {e['msg']}")
    return out


def parse(kind: SpecKind, text: str | None, cat: Catalogue, max_chars: int) -> Parsed:
    """The model's answer as a valid spec body, or the errors to send back."""
    if not text or not text.strip():
        return Parsed(None, ["the answer is empty; answer with one JSON object"])
    if len(text) > max_chars:
        return Parsed(None, [f"the answer is longer than {max_chars} characters"])
    try:
        data = json.loads(_strip_fence(text))
    except (ValueError, RecursionError) as exc:
        return Parsed(None, [f"the answer is not valid JSON: {str(exc)[:200]}"])
    if not isinstance(data, dict):
        return Parsed(None, ["the answer must be one JSON object"])
    model = MODELS[kind]
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        return Parsed(None, _pydantic_errors(exc))
    errors = _tool_rules(body, cat) if isinstance(body, ToolCreateRequest) else []
    if errors:
        return Parsed(None, errors)
    return Parsed(body.model_dump(mode="json"), [])


def _tool_rules(body: ToolCreateRequest, cat: Catalogue) -> list[str]:
    """What ``agent.create_tool`` refuses beyond the pydantic model."""
    errors = []
    if body.name in cat.builtins:
        errors.append(f"name: {body.name} is a built-in tool; choose another name")
    if len(json.dumps(body.parameters)) > MAX_PARAMETERS_BYTES:
        errors.append(f"parameters: larger than {MAX_PARAMETERS_BYTES} bytes")
    else:
        try:
            jsonschema.Draft202012Validator.check_schema(body.parameters)
        except jsonschema.SchemaError as exc:
            errors.append(f"parameters: not a valid JSON Schema: {exc.message[:200]}")
    impl = body.implementation
    if isinstance(impl, BuiltinImplementation):
        info = cat.builtins.get(impl.builtin)
        if info is not None:
            takes = set((info.parameters.get("properties") or {}).keys())
            extra = sorted(set(impl.arguments) - takes)
            if extra:
                errors.append(
                    f"implementation.arguments: {impl.builtin} takes no argument(s) {extra}; "
                    f"it takes {sorted(takes)}"
                )
    return errors
