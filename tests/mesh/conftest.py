"""Fixtures of the CLI and client tests: the RAG mesh with a scripted gateway
(tests/rag_support.py)."""

from tests.rag_support import fake_gateway, rag_mesh  # noqa: F401
