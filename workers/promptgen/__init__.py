"""Prompt Generator Service: agent and tool specs from plain language — schema-valid by
construction, checked before they are saved, reviewed before they are published."""

from workers.promptgen.service import lifespan

__all__ = ["lifespan"]
