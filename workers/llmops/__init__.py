"""LLMOps Service: every LLM call stored once, queried, measured and priced; budgets the
gateway enforces through a NATS KV bucket (docs/services/llmops.md)."""

from workers.llmops.service import lifespan

__all__ = ["lifespan"]
