"""What a tenant has that a spec may reference: tools, collections, templates, models,
and its ``http_get`` allow-list. Read from the other services for each request
(``remote.py``); a part that could not be read is listed in ``unknown`` and the checks
that need it fail ("could not verify") instead of passing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Built-in kinds that act on the world, and what they do. LLM sub-calls (declarative
#: tools of kind ``llm``) are side-effecting too (they spend money and can be steered).
SIDE_EFFECT_BUILTINS: dict[str, str] = {
    "http_get": "fetches from the network",
    "memory_write": "writes the agent's long-term memory",
}
LLM_SIDE_EFFECT = "calls a model (cost, and output that can be steered)"


@dataclass(frozen=True)
class ToolInfo:
    name: str
    builtin: bool
    base: str
    """The built-in kind it is or wraps, or ``"llm"``."""
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    requires_approval: bool = False
    required_roles: tuple[str, ...] = ()

    @property
    def side_effect(self) -> str | None:
        if self.base == "llm":
            return LLM_SIDE_EFFECT
        return SIDE_EFFECT_BUILTINS.get(self.base)


@dataclass(frozen=True)
class Template:
    name: str
    labels: dict[str, int]
    latest_version: int


@dataclass(frozen=True)
class Catalogue:
    tools: dict[str, ToolInfo] = field(default_factory=dict)
    collections: dict[str, str] = field(default_factory=dict)
    """collection id → name"""
    templates: dict[str, Template] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    """Chat aliases of the gateway."""
    allowlist: tuple[str, ...] = ()
    unknown: frozenset[str] = frozenset()
    """Parts that could not be read: tools, collections, templates, models, settings."""

    @property
    def builtins(self) -> dict[str, ToolInfo]:
        return {n: t for n, t in self.tools.items() if t.builtin}
