"""Fixed log-scale histograms for latency and time to first token.

``BUCKETS`` buckets with the same bounds everywhere: bucket 0 holds values below
``MIN_MS``, bucket ``k`` (``1 <= k < BUCKETS - 1``) holds ``[MIN_MS * G**(k-1),
MIN_MS * G**k)``, and the last bucket holds everything from ``MIN_MS * G**(BUCKETS-2)``
(about 58 min) up. Histograms of any window merge by adding counts, and a percentile is
read off the merged counts: the first bucket whose running count reaches ``q`` of the
total (nearest rank, as ``percentile_disc``), reported as the bucket's geometric middle
``MIN_MS * G**(k-0.5)``. The true value lies in that bucket, so for values from 1 ms to
58 min the relative error is at most ``sqrt(G) - 1`` (about 4.9 % for ``G = 1.1``).

Two storages of the same buckets (docs/services/llmops.md, "Rollups and percentiles"):

* **dense** — a pgvector ``vector(BUCKETS)`` of counts per bucket. Rows of the rollup
  grains that questions read (``rollup_hour_nouser``, ``rollup_hour_user``) hold many
  calls each; the upsert adds vectors (``+``) and a window's histogram is one
  ``sum(vector)`` per group in the GROUP BY, in C, whatever the number of calls. The
  counts are float4: exact up to 2**24 per bucket and row, then within 1e-7 relative.
* **sparse** — ``bigint[]`` entries ``k << 40 | count`` for the reference grains keyed
  by every dimension (``rollup_hour``, ``rollup_day``), whose rows hold a handful of calls
  each (a dense vector would be 99 % zeros there). A bucket may appear in several entries
  (an upsert appends the batch's entries; ``llmops.hist_merge`` folds them once the array
  passes ``store.COMPACT_AT`` entries); readers add all entries of a bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

#: Lower bound of bucket 1, in milliseconds.
MIN_MS = 1.0
#: Growth factor between bucket bounds.
GROWTH = 1.1
#: Number of buckets (the dimension of a dense histogram).
BUCKETS = 160
#: Largest bucket index: values from about 58 minutes up land here.
MAX_BUCKET = BUCKETS - 1
#: Bits of one sparse entry that hold the count.
COUNT_BITS = 40
COUNT_MASK = (1 << COUNT_BITS) - 1
#: Largest relative error of a percentile read from these histograms (values in
#: ``[MIN_MS, TOP_MS)``).
RELATIVE_ERROR = math.sqrt(GROWTH) - 1
#: Lower bound of the last bucket (about 58 minutes).
TOP_MS = MIN_MS * GROWTH ** (BUCKETS - 2)

#: Latency quantiles the per-user rollup rows keep computed (``latency_q``: p50, p95, p99).
KEPT_QUANTILES = (0.5, 0.95, 0.99)

_LOG_G = math.log(GROWTH)
_VALUES = np.array([0.0] + [MIN_MS * GROWTH ** (k - 0.5) for k in range(1, BUCKETS)])


def bucket_of(ms: float) -> int:
    if ms < MIN_MS:
        return 0
    return min(MAX_BUCKET, int(math.log(ms / MIN_MS) / _LOG_G) + 1)


def value_of(k: int) -> float:
    """The value reported for bucket ``k``: its geometric middle (0 for bucket 0)."""
    if k <= 0:
        return 0.0
    return MIN_MS * GROWTH ** (k - 0.5)


# ---------------------------------------------------------------- sparse


def encode(values: Iterable[float]) -> list[int]:
    return encode_buckets(bucket_of(v) for v in values)


def encode_buckets(ks: Iterable[int]) -> list[int]:
    """Sparse entries of the bucket numbers ``ks`` (a plain dict: ``Counter`` costs more
    per call than the handful of calls a rollup row gets from one batch)."""
    counts: dict[int, int] = {}
    for k in ks:
        counts[k] = counts.get(k, 0) + 1
    return [(k << COUNT_BITS) | c for k, c in sorted(counts.items())]


def literal(entries: list[int]) -> str:
    """A Postgres array literal (sent as text and cast: arrays of arrays cannot unnest)."""
    return "{" + ",".join(map(str, entries)) + "}"


# ---------------------------------------------------------------- dense

_ZEROS = ["0"] * BUCKETS
#: The text of an empty dense histogram.
ZERO_VECTOR = "[" + ",".join(_ZEROS) + "]"


def dense_literal(values: Iterable[float]) -> str:
    """A pgvector literal of the counts per bucket of ``values``."""
    return dense_literal_buckets(bucket_of(v) for v in values)


def dense_literal_buckets(ks: Iterable[int]) -> str:
    """A pgvector literal of the counts of the bucket numbers ``ks``: the zeros are
    copied, only the buckets used are formatted (rows get a few calls per batch)."""
    counts: dict[int, int] = {}
    for k in ks:
        counts[k] = counts.get(k, 0) + 1
    if not counts:
        return ZERO_VECTOR
    parts = _ZEROS.copy()
    for k, c in counts.items():
        parts[k] = str(c)
    return "[" + ",".join(parts) + "]"


def dense_counts(sent: Sequence[bytes | None]) -> np.ndarray:
    """Rows of counts from ``vector_send`` results (pgvector's binary form: int16
    dimension, int16 unused, then big-endian float4s); a NULL is a row of zeros.

    A read-only view of the joined bytes (big-endian float32, no copy: an answer by user
    per hour over 30 days is 36,000 rows, 23 MB of histograms)."""
    width = 4 + 4 * BUCKETS
    blank = b"\0" * width
    raw = b"".join(blank if s is None else s for s in sent)
    if len(raw) != width * len(sent):
        raise ValueError("a histogram of another dimension")
    rows = np.frombuffer(raw, dtype=">f4").reshape(len(sent), BUCKETS + 1)
    return rows[:, 1:]


def dense_percentiles(counts: np.ndarray, qs: Sequence[float]) -> dict[float, list[float | None]]:
    """Each quantile of ``qs`` for every row of ``counts`` (``None`` for an empty row):
    the value of the first bucket whose running count reaches ``q`` of the row's total."""
    # float32 running counts, in native order, summed in place: exact up to 2**24 calls
    # per group, then the rank is off by one call in ten million at most (nothing next
    # to the bucket width).
    cum = counts.astype(np.float32)
    np.cumsum(cum, axis=1, out=cum)
    total = cum[:, -1]
    empty = np.flatnonzero(total <= 0).tolist()
    out: dict[float, list[float | None]] = {}
    for q in qs:
        # The rank ``percentile_disc`` takes: ceil(q * n) in double precision, at least 1.
        rank = np.maximum(np.ceil(q * total.astype(np.float64)), 1).astype(np.float32)
        # The first bucket reaching the rank = the number of buckets below it (the running
        # counts never decrease); an empty row has none reaching it (reported as None).
        k = np.minimum((cum < rank[:, None]).sum(axis=1), MAX_BUCKET)
        vals: list[float | None] = _VALUES[k].tolist()
        for i in empty:
            vals[i] = None
        out[q] = vals
    return out


#: Rows of histograms read at a time by :func:`sent_percentiles`.
PERCENTILE_CHUNK = 2048


def sent_percentiles(
    sent: Sequence[bytes | None], qs: Sequence[float]
) -> dict[float, list[float | None]]:
    """:func:`dense_percentiles` of ``vector_send`` results, ``PERCENTILE_CHUNK`` rows at
    a time: the same values, but the working arrays (~1.3 MB) are reused from chunk to
    chunk instead of 23 MB ones being mapped and faulted in for 36,000 rows (a third
    faster here)."""
    out: dict[float, list[float | None]] = {q: [] for q in qs}
    for lo in range(0, len(sent), PERCENTILE_CHUNK):
        part = dense_percentiles(dense_counts(sent[lo : lo + PERCENTILE_CHUNK]), qs)
        for q in qs:
            out[q].extend(part[q])
    return out


# ---------------------------------------------------------------- SQL


def sql_bucket(column: str) -> str:
    """SQL computing :func:`bucket_of` of a column (for raw rows)."""
    return (
        f"CASE WHEN {column} < {MIN_MS} THEN 0 ELSE least({MAX_BUCKET}, "
        f"floor(ln({column} / {MIN_MS}) / ln({GROWTH}))::int + 1) END"
    )
