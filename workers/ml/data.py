"""Datasets and rows: parsing, checking against a schema, encoding to the model's input.

Used by the training process (whole datasets) and by the worker (prediction and drift
rows, at most a few thousand). Every function is linear in its input. Problems are
:class:`DataError` naming the column and the row (0-based index into the rows; for a CSV,
the data row after the header).

Encoding: a numeric feature is one float32 column; a categorical feature is one-hot over
the categories seen in training (at most :data:`MAX_CATEGORIES`, the most frequent), and a
value not among them encodes as all zeros. The ONNX model takes that one float matrix.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Most one-hot columns one categorical feature gets (the most frequent categories).
MAX_CATEGORIES = 100
#: Most problems one error lists in its details.
MAX_PROBLEMS = 20
#: Longest CSV field accepted (csv's own default limit is 128 KiB).
MAX_CSV_FIELD = 64 * 1024
_INT = re.compile(r"-?[0-9]{1,18}\Z")


class DataError(Exception):
    """Bad data; ``details`` names the column(s) and row(s)."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


@dataclass
class Feature:
    name: str
    type: str  # "numeric" | "categorical"
    categories: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.type == "categorical":
            d["categories"] = self.categories
        return d


def features_of(signature: dict[str, Any]) -> list[Feature]:
    return [
        Feature(f["name"], f["type"], list(f.get("categories") or []))
        for f in signature["features"]
    ]


def width_of(features: Sequence[Feature]) -> int:
    return sum(1 if f.type == "numeric" else len(f.categories) for f in features)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- reading datasets


def read_csv(data: bytes) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a UTF-8 CSV (comma separated, RFC 4180 quoting)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"the CSV is not UTF-8 (byte {exc.start})") from None
    csv.field_size_limit(MAX_CSV_FIELD)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise DataError("the CSV is empty: a header line is needed")
        rows = []
        for i, row in enumerate(reader):
            if not row:
                continue  # blank line
            if len(row) != len(header):
                raise DataError(
                    f"row {i}: {len(row)} fields, the header has {len(header)}",
                    {"row": i, "fields": len(row), "header": len(header)},
                )
            rows.append(row)
    except csv.Error as exc:
        raise DataError(f"the CSV cannot be parsed: {exc}") from None
    names = [h.strip() for h in header]
    dupes = [n for n, c in Counter(names).items() if c > 1]
    if dupes:
        raise DataError(f"duplicate column {dupes[0]!r} in the header", {"column": dupes[0]})
    if any(not n for n in names):
        raise DataError("a column of the header has no name")
    return names, rows


def columns_from_csv(data: bytes) -> tuple[list[str], dict[str, list[Any]]]:
    """CSV → column name → raw values (strings; an empty field is ``None``)."""
    names, rows = read_csv(data)
    cols: dict[str, list[Any]] = {n: [] for n in names}
    lists = [cols[n] for n in names]
    for row in rows:
        for j, v in enumerate(row):
            lists[j].append(v if v != "" else None)
    return names, cols


def columns_from_rows(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, list[Any]]]:
    """Inline rows → column name → values (``None`` where a row lacks the key)."""
    names: dict[str, None] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"row {i} is not an object", {"row": i})
        for k in row:
            names.setdefault(str(k), None)
    cols: dict[str, list[Any]] = {n: [] for n in names}
    for row in rows:
        for n, values in cols.items():
            values.append(row.get(n))
    return list(names), cols


# ---------------------------------------------------------------- training data


@dataclass
class TrainingData:
    features: list[Feature]
    X: np.ndarray  # encoded float32, rows x width
    raw: dict[str, list[Any]]  # feature -> typed values (float or str), for the reference
    y: list[Any]
    target: str


def prepare(
    names: list[str],
    cols: dict[str, list[Any]],
    *,
    target: str,
    task: str,
    declared: list[Any] | None,
    from_csv: bool,
    min_rows: int,
) -> TrainingData:
    """Check a dataset and encode it. ``declared`` items are names or {name, type}."""
    n = len(next(iter(cols.values()))) if cols else 0
    if target not in cols:
        raise DataError(f"target column {target!r} is not in the dataset", {"column": target})
    specs: list[tuple[str, str | None]] = []
    if declared:
        for d in declared:
            name, kind = (d, None) if isinstance(d, str) else (d["name"], d.get("type"))
            if name not in cols:
                raise DataError(f"feature {name!r} is not in the dataset", {"column": name})
            if name == target:
                raise DataError(f"the target {target!r} cannot be a feature", {"column": name})
            specs.append((name, kind))
    else:
        specs = [(c, None) for c in names if c != target]
    if not specs:
        raise DataError("the dataset has no feature column besides the target")
    if len({s[0] for s in specs}) != len(specs):
        raise DataError("a feature is named twice")
    if n < min_rows:
        raise DataError(
            f"too few rows: {n}, at least {min_rows} are needed", {"rows": n, "min_rows": min_rows}
        )

    y = _target(cols[target], target, task, from_csv)
    raw: dict[str, list[Any]] = {}
    features: list[Feature] = []
    for name, kind in specs:
        values = cols[name]
        kind = kind or _infer(values, from_csv)
        if kind == "numeric":
            raw[name] = _numeric(values, name, from_csv)
            features.append(Feature(name, "numeric"))
        else:
            raw[name] = _categorical(values, name)
            top = Counter(raw[name]).most_common(MAX_CATEGORIES)
            features.append(Feature(name, "categorical", sorted(c for c, _ in top)))
    if task == "classification" and len(set(y)) < 2:
        only = _show(y[0]) if y else "none"
        raise DataError(
            f"target {target!r} has one class only ({only}); classification needs two or more",
            {"column": target, "classes": 1},
        )
    return TrainingData(features, encode_columns(features, raw, n), raw, y, target)


def _infer(values: list[Any], from_csv: bool) -> str:
    """Numeric if the first present value is a number (CSV: parses as a finite float)."""
    for v in values:
        if v is None:
            continue
        if from_csv:
            try:
                return "numeric" if math.isfinite(float(v)) else "categorical"
            except ValueError:
                return "categorical"
        return "numeric" if _is_number(v) else "categorical"
    return "numeric"


def _target(values: list[Any], target: str, task: str, from_csv: bool) -> list[Any]:
    out: list[Any] = []
    for i, v in enumerate(values):
        if v is None or v == "":
            raise DataError(
                f"column {target!r} row {i}: the target is missing", {"column": target, "row": i}
            )
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise DataError(
                f"column {target!r} row {i}: {_type_name(v)} is not a label; use a number"
                " or a string",
                {"column": target, "row": i},
            )
        if task == "regression":
            x = _to_float(v, from_csv)
            if x is None:
                raise DataError(
                    f"column {target!r} row {i}: {_show(v)} is not a number (regression target)",
                    {"column": target, "row": i, "value": _show(v)},
                )
            out.append(x)
        else:
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            out.append(v)
    if task == "classification" and from_csv and all(_INT.match(v) for v in out):
        out = [int(v) for v in out]  # CSV labels 0/1/2 stay numbers, as in JSON rows
    if task == "classification" and len({type(v) for v in out}) > 1:
        first = type(out[0])
        i = next(i for i, v in enumerate(out) if type(v) is not first)
        raise DataError(
            f"column {target!r} row {i}: labels mix numbers and strings",
            {"column": target, "row": i},
        )
    return out


def _to_float(v: Any, from_csv: bool) -> float | None:
    if _is_number(v):
        x = float(v)
    elif from_csv and isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            return None
    else:
        return None
    return x if math.isfinite(x) else None


def _numeric(values: list[Any], name: str, from_csv: bool) -> Any:
    """The column as float64, or the first bad cell named. Fast path: numpy converts the
    whole column (CSV strings are parsed in C); any doubt takes the per-cell path."""
    if None not in values:
        kinds = set(map(type, values))
        if kinds <= ({str} if from_csv else {int, float}):
            try:
                column = np.asarray(values, dtype=np.float64)
            except (ValueError, TypeError, OverflowError):
                column = None
            if column is not None and np.isfinite(column).all():
                return column
    return _numeric_cells(values, name, from_csv)


def _numeric_cells(values: list[Any], name: str, from_csv: bool) -> list[float]:
    out: list[float] = []
    for i, v in enumerate(values):
        if v is None:
            raise DataError(
                f"column {name!r} row {i}: missing value in a numeric column",
                {"column": name, "row": i},
            )
        x = _to_float(v, from_csv)
        if x is None:
            raise DataError(
                f"column {name!r} row {i}: {_show(v)} is not a number (numeric column)",
                {"column": name, "row": i, "value": _show(v)},
            )
        out.append(x)
    return out


def _categorical(values: list[Any], name: str) -> list[str]:
    out: list[str] = []
    for i, v in enumerate(values):
        if v is None:
            raise DataError(f"column {name!r} row {i}: missing value", {"column": name, "row": i})
        if not isinstance(v, str):
            raise DataError(
                f"column {name!r} row {i}: {_show(v)} is not a string (categorical column)",
                {"column": name, "row": i, "value": _show(v)},
            )
        out.append(v)
    return out


def encode_columns(features: Sequence[Feature], raw: dict[str, Any], n: int) -> np.ndarray:
    X = np.zeros((n, width_of(features)), dtype=np.float32)
    col = 0
    for f in features:
        values = raw[f.name]
        if f.type == "numeric":
            X[:, col] = np.asarray(values, dtype=np.float64)
            col += 1
        else:
            index = {c: j for j, c in enumerate(f.categories)}
            codes = np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=n)
            hit = codes >= 0
            X[np.flatnonzero(hit), col + codes[hit]] = 1.0
            col += len(f.categories)
    return X


# ---------------------------------------------------------------- scoring rows


def check_rows(features: Sequence[Feature], rows: Sequence[Any]) -> dict[str, Any]:
    """Rows → typed columns, after checking each row has exactly the features, typed.

    Raises :class:`DataError` listing the first :data:`MAX_PROBLEMS` problems, each with
    its row and feature. Numeric columns come back as float64 arrays.
    """
    fast = _check_rows_fast(features, rows)
    if fast is not None:
        return fast
    return _check_rows_slow(features, rows)


def _check_rows_fast(features: Sequence[Feature], rows: Sequence[Any]) -> dict[str, Any] | None:
    """Whole columns at a time (C-speed passes); ``None`` at the first doubt, and the slow
    path then finds and names the problems."""
    n = len(features)
    if set(map(type, rows)) != {dict} or set(map(len, rows)) != {n}:
        return None  # not all objects, or a feature missing or extra somewhere
    cols: dict[str, Any] = {}
    for f in features:
        try:
            col = [row[f.name] for row in rows]
        except KeyError:
            return None
        kinds = set(map(type, col))
        if f.type == "numeric":
            if not kinds <= {float, int}:
                return None
            values = np.asarray(col, dtype=np.float64)
            if not np.isfinite(values).all():
                return None
            cols[f.name] = values
        else:
            if kinds != {str}:
                return None
            cols[f.name] = col
    return cols


def _check_rows_slow(features: Sequence[Feature], rows: Iterable[Any]) -> dict[str, list[Any]]:
    names = {f.name: f for f in features}
    cols: dict[str, list[Any]] = {f.name: [] for f in features}
    problems: list[dict[str, Any]] = []

    def problem(row: int, feature: str, kind: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append({"row": row, "feature": feature, "problem": kind})

    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problem(i, "", "not an object")
            continue
        for key in row:
            if key not in names:
                problem(i, str(key), "unexpected feature")
        for f in features:
            v = row.get(f.name, _MISSING)
            if v is _MISSING or v is None:
                problem(i, f.name, "missing")
                continue
            if f.type == "numeric":
                if not _is_number(v) or not math.isfinite(float(v)):
                    problem(i, f.name, f"expected a number, got {_type_name(v)}")
                    continue
                cols[f.name].append(float(v))
            else:
                if not isinstance(v, str):
                    problem(i, f.name, f"expected a string, got {_type_name(v)}")
                    continue
                cols[f.name].append(v)
        if problems and len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        shown = "; ".join(
            f"row {p['row']} feature {p['feature']!r}: {p['problem']}" for p in problems[:5]
        )
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DataError(f"rows do not match the model's signature: {shown}{more}", problems)
    return cols


_MISSING = object()


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if _is_number(v):
        return "a non-finite number"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "an array"
    return "a " + type(v).__name__


def encode_rows(features: Sequence[Feature], rows: Sequence[Any]) -> np.ndarray:
    cols = check_rows(features, rows)
    return encode_columns(features, cols, len(rows))
