"""Fixtures of the hostile-input and limit tests: the agent worker (tests/agent_env.py)
and the RAG mesh with a scripted gateway (tests/rag_support.py)."""

from tests.agent_env import agent_worker, fake_services, web  # noqa: F401
from tests.rag_support import fake_gateway, rag_mesh  # noqa: F401
