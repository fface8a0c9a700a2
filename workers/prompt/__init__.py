"""Prompt Service: versioned templates with labels, sandboxed rendering, context building."""

from workers.prompt.service import lifespan

__all__ = ["lifespan"]
