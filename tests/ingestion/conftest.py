"""Fixtures of the ingestion tests: a scripted gateway (tests/rag_support.py)."""

from tests.rag_support import fake_gateway  # noqa: F401
