"""Fixed log-scale histograms for latency and time to first token.

Bucket ``k`` (``k >= 1``) holds values in ``[MIN_MS * G**(k-1), MIN_MS * G**k)``; bucket 0
holds everything below ``MIN_MS``. Every rollup row uses the same bounds, so histograms of
any window merge by adding counts, and a percentile is read off the merged counts.

A percentile is reported as the geometric middle of its bucket, ``MIN_MS * G**(k-0.5)``:
the true value lies in the bucket, so the relative error is at most ``sqrt(G) - 1``
(about 4.9 % for ``G = 1.1``).

Storage is sparse (most rollup rows hold a handful of calls): one ``bigint`` per entry,
``k << 40 | count``. A bucket may appear in several entries of one array (an upsert appends
the batch's entries; ``llmops.hist_merge`` folds them once the array passes
``store.COMPACT_AT`` entries); readers add all entries of a bucket.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

#: Lower bound of bucket 1, in milliseconds.
MIN_MS = 0.1
#: Growth factor between bucket bounds.
GROWTH = 1.1
#: Largest bucket index: values from about 24 days up land here.
MAX_BUCKET = 200
#: Bits of one entry that hold the count.
COUNT_BITS = 40
COUNT_MASK = (1 << COUNT_BITS) - 1
#: Largest relative error of a percentile read from these histograms.
RELATIVE_ERROR = math.sqrt(GROWTH) - 1

_LOG_G = math.log(GROWTH)


def bucket_of(ms: float) -> int:
    if ms < MIN_MS:
        return 0
    return min(MAX_BUCKET, int(math.log(ms / MIN_MS) / _LOG_G) + 1)


def value_of(k: int) -> float:
    """The value reported for bucket ``k``: its geometric middle (0 for bucket 0)."""
    if k <= 0:
        return 0.0
    return MIN_MS * GROWTH ** (k - 0.5)


def encode(values: Iterable[float]) -> list[int]:
    counts = Counter(bucket_of(v) for v in values)
    return [(k << COUNT_BITS) | c for k, c in sorted(counts.items())]


def literal(entries: list[int]) -> str:
    """A Postgres array literal (sent as text and cast: arrays of arrays cannot unnest)."""
    return "{" + ",".join(map(str, entries)) + "}"


def sql_bucket(column: str) -> str:
    """SQL computing :func:`bucket_of` of a column (for raw rows)."""
    return (
        f"CASE WHEN {column} < {MIN_MS} THEN 0 ELSE least({MAX_BUCKET}, "
        f"floor(ln({column} / {MIN_MS}) / ln({GROWTH}))::int + 1) END"
    )
