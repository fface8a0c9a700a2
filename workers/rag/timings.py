"""Where one search's time goes: named stages timed inside a request.

:func:`collect` starts a record for the current request (a context variable, so the
tasks of a task group — both legs — add to the same record); :func:`stage` times a block
into it, and does nothing outside a recording request. ``rag.search`` logs the record at
debug level (``rag_search_timings``) and hands it to an optional observer (the 1M-chunk
bench prints a per-stage breakdown with it: bench/bench_rag_search.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_RECORD: ContextVar[dict[str, float] | None] = ContextVar("rag_search_timings", default=None)


def collect() -> dict[str, float]:
    """A new, empty record for the current request (seconds per stage)."""
    record: dict[str, float] = {}
    _RECORD.set(record)
    return record


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the block's wall time to ``name`` in the current record, if any."""
    if _RECORD.get() is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - t0)


def add(name: str, value: float) -> None:
    """Add ``value`` (seconds, or a count) to ``name`` in the current record, if any."""
    record = _RECORD.get()
    if record is not None:
        record[name] = record.get(name, 0.0) + value
