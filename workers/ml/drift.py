"""Drift: a compact summary of the training data, and per-feature tests against it.

The reference is stored with each version, not the training rows: for a numeric feature
1,001 quantiles (every 0.1%) plus count, mean and spread; for a categorical one the count
of each category (the :data:`~workers.ml.data.MAX_CATEGORIES` most frequent, the rest as
"other"). Comparing n current rows is then O(n log n) whatever the training set's size.

Tests (thresholds in docs/services/ml.md):

* numeric — two-sample Kolmogorov–Smirnov: D = the largest gap between the reference CDF
  (piecewise linear through its quantiles) and the current sample's empirical CDF,
  p-value from the Kolmogorov distribution at sqrt(n·m/(n+m))·D; the effect size is the
  Population Stability Index over the reference's deciles.
* categorical — chi-square goodness of fit of the current counts against the reference
  proportions (smoothed, unseen values pooled as "other"); the effect size is the
  Jensen–Shannon distance (base 2, 0..1).

A feature drifts when the test is significant (p < :data:`P_VALUE`) AND the effect is
not negligible (PSI or JS distance ≥ its threshold): on large samples a test alone flags
differences too small to matter.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from workers.ml.data import MAX_CATEGORIES, Feature

QUANTILES = 1001
P_VALUE = 0.01
PSI_THRESHOLD = 0.1
JS_THRESHOLD = 0.1
OTHER = "\x00other"
_EPS = 1e-4


def reference(features: Sequence[Feature], raw: dict[str, list[Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in features:
        values = raw[f.name]
        if f.type == "numeric":
            a = np.asarray(values, dtype=np.float64)
            out[f.name] = {
                "type": "numeric",
                "n": int(a.size),
                "quantiles": np.quantile(a, np.linspace(0, 1, QUANTILES)).tolist(),
                "mean": float(a.mean()),
                "std": float(a.std()),
            }
        else:
            counts = Counter(values)
            top = dict(counts.most_common(MAX_CATEGORIES))
            out[f.name] = {
                "type": "categorical",
                "n": len(values),
                "counts": top,
                "other": len(values) - sum(top.values()),
            }
    return out


def compare(
    features: Sequence[Feature], ref: dict[str, Any], current: dict[str, list[Any]]
) -> list[dict[str, Any]]:
    """One result per feature: {name, test, statistic, p_value, distance_metric, distance,
    drifted}."""
    results = []
    for f in features:
        r = ref.get(f.name)
        if r is None:
            continue
        if r["type"] == "numeric":
            results.append({"name": f.name, **_numeric(r, np.asarray(current[f.name], float))})
        else:
            results.append({"name": f.name, **_categorical(r, current[f.name])})
    return results


def _numeric(ref: dict[str, Any], cur: np.ndarray) -> dict[str, Any]:
    q = np.asarray(ref["quantiles"], dtype=np.float64)
    probs = np.linspace(0.0, 1.0, q.size)
    n, m = int(ref["n"]), int(cur.size)
    cur = np.sort(cur)

    def f_ref(x: np.ndarray, side: str) -> np.ndarray:
        # The reference CDF at x: right-continuous ("right") or its left limit ("left"),
        # so a value repeated in the reference (a jump) is measured on both sides.
        lo = np.searchsorted(q, x, side="left")
        hi = np.searchsorted(q, x, side="right")
        inner = np.interp(x, q, probs)
        at = (
            probs[np.clip(hi - 1, 0, q.size - 1)]
            if side == "right"
            else probs[np.clip(lo, 0, q.size - 1)]
        )
        jump = hi > lo
        res = np.where(jump, at, inner)
        res = np.where(x < q[0], 0.0, res)
        return np.where(x > q[-1], 1.0, res)

    points = np.concatenate([q, cur])
    gaps = np.maximum(
        np.abs(f_ref(points, "right") - np.searchsorted(cur, points, side="right") / m),
        np.abs(f_ref(points, "left") - np.searchsorted(cur, points, side="left") / m),
    )
    d = float(gaps.max()) if m else 0.0
    p = _kolmogorov_p(d, n * m / (n + m)) if m and n else 1.0
    psi = _psi(q, cur)
    return {
        "test": "ks",
        "statistic": d,
        "p_value": p,
        "distance_metric": "psi",
        "distance": psi,
        "drifted": bool(p < P_VALUE and psi >= PSI_THRESHOLD),
    }


def _kolmogorov_p(d: float, n_eff: float) -> float:
    from scipy.special import kolmogorov

    return float(min(1.0, max(0.0, kolmogorov(math.sqrt(n_eff) * d))))


def _psi(q: np.ndarray, cur: np.ndarray) -> float:
    edges = np.unique(q[np.linspace(0, q.size - 1, 11).astype(int)][1:-1])
    probs = np.linspace(0.0, 1.0, q.size)
    # Reference share of each bin, read off its own quantile grid (deciles, unless values
    # repeat so much that bins merge).
    ref_cdf = np.concatenate([[0.0], np.interp(edges, q, probs), [1.0]])
    ref_share = np.diff(ref_cdf)
    bins = np.searchsorted(edges, cur, side="right")
    cur_share = np.bincount(bins, minlength=edges.size + 1) / max(cur.size, 1)
    r = np.clip(ref_share, _EPS, None)
    c = np.clip(cur_share, _EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _categorical(ref: dict[str, Any], cur: list[Any]) -> dict[str, Any]:
    from scipy.stats import chisquare

    cats = list(ref["counts"])
    index = {c: i for i, c in enumerate(cats)}
    k = len(cats) + 1  # + other
    ref_counts = np.asarray([*ref["counts"].values(), ref["other"]], dtype=np.float64)
    observed = np.zeros(k)
    for v in cur:
        observed[index.get(v, k - 1)] += 1
    m = observed.sum()
    ref_p = (ref_counts + 0.5) / (ref_counts.sum() + 0.5 * k)
    expected = ref_p * m
    stat, p = chisquare(observed, expected) if m else (0.0, 1.0)
    cur_p = (observed + 0.5) / (m + 0.5 * k)
    mid = (ref_p + cur_p) / 2
    js = math.sqrt(
        max(
            0.0,
            0.5 * np.sum(ref_p * np.log2(ref_p / mid)) + 0.5 * np.sum(cur_p * np.log2(cur_p / mid)),
        )
    )
    return {
        "test": "chi2",
        "statistic": float(stat),
        "p_value": float(p),
        "distance_metric": "js",
        "distance": js,
        "drifted": bool(p < P_VALUE and js >= JS_THRESHOLD),
    }
