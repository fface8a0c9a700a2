"""Gateway Service: the one door to LLMs — generate, stream, embed, models, count_tokens —
through litellm, with offline local models, response caching and LLMOps events."""

import os

# Before anything imports litellm: otherwise it fetches its price map and tokenizers from
# the network at import and on first token count (a ~20 s stall offline).
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from workers.gateway.service import lifespan  # noqa: E402

__all__ = ["lifespan"]
