"""Fixtures of the ML tests: the ML mesh (tests/ml_support.py)."""

from tests.ml_support import ml_mesh  # noqa: F401
