"""Fixtures of the bridge tests: the RAG mesh with a scripted gateway, for uploads
(tests/rag_support.py)."""

from tests.rag_support import fake_gateway, rag_mesh  # noqa: F401
