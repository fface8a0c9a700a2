"""Fixtures of the RAG tests: a scripted gateway and the RAG mesh (tests/rag_support.py)."""

from tests.rag_support import fake_gateway, rag_mesh  # noqa: F401
