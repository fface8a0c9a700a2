"""The JSON schema a model is asked to follow, and local validation of its answer.

**Validation** is the Agent Service's own contract: :class:`schemas.agent.AgentCreateRequest`
or :class:`schemas.agent.ToolCreateRequest` (plus, for tools, the rules ``create_tool``
applies: a Draft 2020-12 argument schema of at most 16 KiB, fixed arguments the built-in
takes, not a built-in's name). The answer is size-capped before parsing
(``PROMPTGEN_MAX_ANSWER_CHARS``), so parsing and validating it inline is bounded work.

**The generation schema** is that contract narrowed to what this tenant has: tool names,
collection ids, template names and model aliases become enums, numbers become presets
within the policy, free-form maps (``capabilities``) are left out. Every document valid
under it is valid under the contract (``tests/promptgen/test_promptgen_units.py`` checks this), and
a grammar-constrained local model (llama.cpp) can only write existing references. String
lengths and regex patterns are left to local validation in the full schema: llama.cpp
builds ``maxLength`` as nested optional rules, which makes long bounds slow.

**The compact schema** (models in ``PROMPTGEN_COMPACT_MODELS``, by default the local
``local-chat``) asks only for what needs judgement — an agent's name, instructions, tools,
collections and step limit; a tool's name, description and implementation — with every
free string bounded (``maxLength``) and every array short (``maxItems``), so a grammar
closes each string and the whole answer fits ``max_tokens`` even when a small model starts
repeating itself. :func:`completer` fills the rest deterministically *before* validation:
the base spec's values when refining, otherwise an agent's description is the request and
everything else is the Agent Service's own default; a tool's ``parameters`` are derived
from its implementation (the built-in's arguments that are not fixed, or the template's
variables as strings); a tool named like a built-in becomes ``<name>_tool``. The completed
document is validated against the same contract.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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


#: Bounds of the compact schema's free strings (characters) and lists.
COMPACT_NAME = 48
COMPACT_PROMPT = 400
COMPACT_DESCRIPTION = 160
COMPACT_ARGUMENT = 120
COMPACT_TOOLS = 4
COMPACT_COLLECTIONS = 3
# From 2: an agent with tools needs one step for a call and one to answer from it.
COMPACT_STEPS = (2, 3, 5, 8, 12, 20)


def _text(max_length: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


def compact_agent_schema(cat: Catalogue, config: PromptgenConfig) -> dict[str, Any]:
    tools = sorted(cat.tools)
    return _obj(
        {
            "name": _text(COMPACT_NAME),
            "system_prompt": _text(COMPACT_PROMPT),
            "tools": _strings(tools, min(config.max_tools, COMPACT_TOOLS)),
            "rag_collections": _strings(sorted(cat.collections), COMPACT_COLLECTIONS),
            "limits": _obj(
                {"max_steps": _enum([v for v in COMPACT_STEPS if v <= config.max_steps])}
            ),
        }
    )


def _compact_builtin_branch(
    kind: str, parameters: dict[str, Any], cat: Catalogue
) -> dict[str, Any]:
    """Arguments the tool may fix, all optional: collections and templates from the
    tenant's (enums), any other string argument bounded (a URL, a time zone)."""
    props: dict[str, Any] = {}
    for name, sub in (parameters.get("properties") or {}).items():
        if name == "collection_ids":
            props[name] = _strings(sorted(cat.collections), COMPACT_COLLECTIONS)
        elif name == "name" and kind == "prompt_render":
            props[name] = _enum(sorted(cat.templates)) if cat.templates else _text(COMPACT_NAME)
        elif isinstance(sub, dict) and sub.get("type") == "string":
            props[name] = _text(COMPACT_ARGUMENT)
    return _obj(
        {
            "kind": _enum(["builtin"]),
            "builtin": _enum([kind]),
            "arguments": _obj(props, required=[]),
        }
    )


def compact_tool_schema(cat: Catalogue, config: PromptgenConfig) -> dict[str, Any]:
    branches = [
        _compact_builtin_branch(name, info.parameters, cat)
        for name, info in sorted(cat.builtins.items())
    ]
    if cat.templates:
        branches.append(
            _obj({"kind": _enum(["llm"]), "prompt": _obj({"name": _enum(sorted(cat.templates))})})
        )
    implementation: dict[str, Any] = {"anyOf": branches} if branches else {"type": "object"}
    return _obj(
        {
            # A tool name: the contract's pattern, bounded.
            "name": {"type": "string", "pattern": f"^[a-z][a-z0-9_]{{0,{COMPACT_NAME - 1}}}$"},
            "description": _text(COMPACT_DESCRIPTION),
            "implementation": implementation,
        }
    )


def generation_schema(
    kind: SpecKind, cat: Catalogue, config: PromptgenConfig, *, compact: bool = False
) -> dict[str, Any]:
    if compact:
        return (
            compact_agent_schema(cat, config)
            if kind == "agent"
            else compact_tool_schema(cat, config)
        )
    return agent_schema(cat, config) if kind == "agent" else tool_schema(cat, config)


#: The fields the compact schema leaves to :func:`completer`.
COMPACT_FILLED = {
    "agent": (
        "description, approval_required, llm_model, parameters, the other limits, memory, retrieval"
    ),
    "tool": "parameters, requires_approval (a built-in's name gets the suffix _tool)",
}


def _derived_parameters(impl: Any, cat: Catalogue) -> dict[str, Any]:
    """The arguments a caller passes to a declarative tool: for a built-in, its own
    argument schema without the fixed arguments; for a template, string variables."""
    if not isinstance(impl, dict):
        return {"type": "object", "properties": {}}
    if impl.get("kind") == "llm":
        return {
            "type": "object",
            "description": "the prompt template's variables",
            "additionalProperties": {"type": "string"},
        }
    info = cat.builtins.get(str(impl.get("builtin")))
    fixed = (
        set((impl.get("arguments") or {}).keys())
        if isinstance(impl.get("arguments"), dict)
        else set()
    )
    if info is None:
        return {"type": "object", "properties": {}}
    base = info.parameters
    props = {k: v for k, v in (base.get("properties") or {}).items() if k not in fixed}
    out: dict[str, Any] = {"type": "object", "properties": props}
    required = [r for r in base.get("required") or [] if r in props]
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    return out


def request_description(prompt: str) -> str:
    """An agent's description in the compact path: the request it was written from."""
    text = " ".join(prompt.split())
    return text if len(text) <= 300 else text[:297].rstrip() + "..."


def completer(
    kind: SpecKind, cat: Catalogue, base: dict[str, Any] | None
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Fills what the compact schema leaves out: ``base``'s values (the spec being refined,
    or ``{"description": …}`` for a new agent), then derived tool parameters. Whatever the
    model wrote wins; nested ``limits`` are merged key by key."""
    given = dict(base or {})

    def fill(data: dict[str, Any]) -> dict[str, Any]:
        out = {**given, **data}
        if isinstance(given.get("limits"), dict) and isinstance(data.get("limits"), dict):
            out["limits"] = {**given["limits"], **data["limits"]}
        retrieval = out.get("retrieval")
        if kind == "agent" and isinstance(retrieval, dict) and not out.get("rag_collections"):
            # A refinement that drops every collection cannot keep the base's auto retrieval
            # (the contract refuses it); normalization decides the mode again after.
            out["retrieval"] = {**retrieval, "mode": "tool"}
        if kind == "tool" and isinstance(out.get("name"), str) and out["name"] in cat.builtins:
            # A small model copies the built-in's name, which a tool may not take.
            out["name"] = f"{out['name']}_tool"
        if kind == "tool" and "parameters" not in data:
            same_impl = given.get("implementation") == data.get("implementation")
            if not (same_impl and "parameters" in given):
                out["parameters"] = _derived_parameters(data.get("implementation"), cat)
        return out

    return fill


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


def parse(
    kind: SpecKind,
    text: str | None,
    cat: Catalogue,
    max_chars: int,
    fill: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Parsed:
    """The model's answer as a valid spec body, or the errors to send back. ``fill``
    completes a compact answer before it is validated (:func:`completer`)."""
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
    if fill is not None:
        data = fill(data)
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
