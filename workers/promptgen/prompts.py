"""The messages that ask a model for a spec, a refined spec, or a repair.

Short on purpose: the local default model has a 2,048-token window and the grammar does
the structural work; the catalogue lists what the tenant has, so the model picks names
that exist.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.promptgen import SpecKind
from workers.promptgen.catalogue import Catalogue

_DESC = 100
_AGENT = (
    "You configure AI agents for the Motadata agent service. Answer with one JSON object "
    "that follows the JSON schema: name (short), description (one sentence), system_prompt "
    "(the agent's instructions, addressed to it as 'you'), tools (only from the list below, "
    "only what the task needs), rag_collections (ids from the list below when the agent "
    "answers from documents, together with the tool rag_search), approval_required (every "
    "tool that fetches from the network, writes memory or calls a model), llm_model (an "
    "alias below, or null for the default), parameters, limits, memory."
)
_TOOL = (
    "You define declarative tools for the Motadata agent service. A tool is data, never "
    "code: a built-in tool with some arguments fixed, or a stored prompt template sent to a "
    "model. Answer with one JSON object that follows the JSON schema: name (lowercase "
    "letters, digits, _), description (what it does, for the model that calls it), "
    "parameters (JSON Schema of the arguments the caller passes), implementation, "
    "requires_approval (true when it fetches from the network, writes memory or calls a "
    "model)."
)
#: The compact schema's fields (``specschema.compact_*``): the rest is filled after.
_AGENT_COMPACT = (
    "You configure AI agents for the Motadata agent service. Answer with one JSON object "
    "that follows the JSON schema: name (a few words), system_prompt (two or three short "
    "sentences to the agent, starting with 'You'), tools (only from the list below, only "
    "what the task needs; rag_search when it answers from documents), rag_collections "
    "(the ids below whose names match the documents asked for), limits.max_steps."
)
_TOOL_COMPACT = (
    "You define declarative tools for the Motadata agent service. A tool is data, never "
    "code: a built-in tool with some arguments fixed, or a stored prompt template sent to a "
    "model. Answer with one JSON object that follows the JSON schema: name (lowercase "
    "letters, digits, _), description (one sentence: what it does), implementation (the "
    "built-in or template it uses, with the arguments to fix)."
)
_RULES = (
    "Never write API keys, tokens, passwords or other secrets, and never internal or "
    "metadata addresses. Every tool that acts on the world needs a person's approval."
)


def _catalogue(cat: Catalogue, limit: int) -> str:
    lines = ["Tools:"]
    for name, info in sorted(cat.tools.items())[:limit]:
        flag = " [needs approval]" if info.side_effect else ""
        lines.append(f"- {name}: {info.description[:_DESC]}{flag}")
    lines.append("Document collections (id: name):")
    lines += [f"- {cid}: {name}" for cid, name in list(cat.collections.items())[:limit]] or [
        "- (none)"
    ]
    if cat.templates:
        lines.append("Prompt templates: " + ", ".join(sorted(cat.templates)[:limit]))
    if cat.models:
        lines.append("Model aliases: " + ", ".join(cat.models[:limit]))
    lines.append("Web hosts http_get may fetch: " + (", ".join(cat.allowlist[:limit]) or "(none)"))
    return "\n".join(lines)


def system(kind: SpecKind, cat: Catalogue, limit: int, *, compact: bool = False) -> dict[str, str]:
    if compact:
        intro = _AGENT_COMPACT if kind == "agent" else _TOOL_COMPACT
    else:
        intro = _AGENT if kind == "agent" else _TOOL
    return {"role": "system", "content": f"{intro}\n{_RULES}\n{_catalogue(cat, limit)}"}


def request(prompt: str, name: str | None) -> dict[str, str]:
    text = f"Request: {prompt}"
    if name:
        text += f"\nName: {name}"
    return {"role": "user", "content": text}


def refine(spec: dict[str, Any], instruction: str) -> dict[str, str]:
    current = json.dumps(spec, ensure_ascii=False, separators=(",", ":"))
    return {
        "role": "user",
        "content": f"Current configuration: {current}\nChange: {instruction}\n"
        "Answer with the complete new configuration.",
    }


def repair(errors: list[str]) -> str:
    listed = "\n".join(f"- {e}" for e in errors)
    return (
        f"That answer cannot be used:\n{listed}\n"
        "Answer again with the complete, corrected JSON object only."
    )
