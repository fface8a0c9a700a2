"""Module-level functions for tests/bus/test_offload.py (the pool imports them by name)."""

from __future__ import annotations

import os
import re
import time

from bus.errors import InvalidRequest


def add(a: int, b: int) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def spin(seconds: float) -> str:
    """Pure CPU, holding the GIL, for ``seconds`` (or until killed)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return "done"


def catastrophic(n: int) -> bool:
    """A regular expression that backtracks exponentially: never finishes for n ~ 40."""
    return re.match(r"^(a+)+$", "a" * n + "b") is not None


def refuse(text: str) -> None:
    raise InvalidRequest(f"refused {text}", {"field": "text"})


def allocate(gib: int) -> int:
    return len(bytearray(gib * 1024**3))


def unpicklable() -> object:
    return lambda: None


class _Odd(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def odd_error() -> None:
    raise _Odd(1, 2)


def crash() -> None:
    os._exit(3)
