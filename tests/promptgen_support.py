"""Shared pieces of the Prompt Generator tests and eval: a catalogue like the Agent
Service's built-ins, and spec bodies a good model would write."""

from __future__ import annotations

import json
from typing import Any

from workers.promptgen.catalogue import Catalogue, Template, ToolInfo


def _schema(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required or [],
        "additionalProperties": False,
    }


#: The Agent Service's built-ins as ``agent.list_tools`` lists them (names and arguments).
BUILTINS: dict[str, dict[str, Any]] = {
    "rag_search": _schema(
        {
            "query": {"type": "string"},
            "collection_ids": {"type": "array", "items": {"type": "string"}},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 20},
            "mode": {"enum": ["hybrid", "vector", "keyword"]},
        },
        ["query"],
    ),
    "prompt_render": _schema(
        {
            "name": {"type": "string"},
            "label": {"type": "string"},
            "version": {"type": "integer"},
            "variables": {"type": "object"},
        },
        ["name"],
    ),
    "calculator": _schema({"expression": {"type": "string"}}, ["expression"]),
    "current_time": _schema({"timezone": {"type": "string"}}),
    "http_get": _schema({"url": {"type": "string"}}, ["url"]),
    "memory_search": _schema(
        {"query": {"type": "string"}, "top_k": {"type": "integer"}}, ["query"]
    ),
    "memory_write": _schema({"text": {"type": "string"}}, ["text"]),
}
DESCRIPTIONS = {
    "rag_search": "Search the document collections granted to this agent.",
    "prompt_render": "Render a stored prompt template with variables.",
    "calculator": "Evaluate an arithmetic expression.",
    "current_time": "The current date and time.",
    "http_get": "Fetch a web page or API over HTTP(S) GET.",
    "memory_search": "Search this agent's long-term memory.",
    "memory_write": "Store a fact in this agent's long-term memory.",
}


def catalogue(
    collections: dict[str, str] | None = None,
    templates: tuple[str, ...] = ("summarize", "translate"),
    allowlist: tuple[str, ...] = ("docs.example.com", "*.status.example.org"),
    declared: dict[str, ToolInfo] | None = None,
) -> Catalogue:
    tools = {
        name: ToolInfo(
            name=name,
            builtin=True,
            base=name,
            description=DESCRIPTIONS[name],
            parameters=params,
            required_roles=("tools:http",) if name == "http_get" else (),
        )
        for name, params in BUILTINS.items()
    }
    tools.update(declared or {})
    return Catalogue(
        tools=tools,
        collections=collections
        if collections is not None
        else {"col-hr": "HR policies", "col-it": "IT handbook"},
        templates={t: Template(t, {"production": 1}, 1) for t in templates},
        models=("local-chat",),
        allowlist=allowlist,
    )


def agent_spec(**fields: Any) -> dict[str, Any]:
    """An agent body as a good model writes it (every field of the generation schema)."""
    body: dict[str, Any] = {
        "name": "helper",
        "description": "Answers questions.",
        "system_prompt": "You answer questions concisely.",
        "tools": [],
        "rag_collections": [],
        "approval_required": [],
        "llm_model": None,
        "parameters": {"temperature": 0, "max_tokens": None},
        "limits": {"max_steps": 8, "token_budget": 50000, "timeout_seconds": 120},
        "memory": {"recall": False, "recall_top_k": 3},
    }
    body.update(fields)
    return body


def tool_spec(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "search_hr",
        "description": "Search the HR policies.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "what to look for"}},
            "required": ["query"],
        },
        "implementation": {
            "kind": "builtin",
            "builtin": "rag_search",
            "arguments": {"collection_ids": ["col-hr"]},
        },
        "requires_approval": False,
    }
    body.update(fields)
    return body


def as_json(body: dict[str, Any]) -> str:
    return json.dumps(body)
