"""The algorithm allow-list and each algorithm's own hyper-parameter table.

``check_params`` runs in the worker when a job is submitted (cheap, no scikit-learn
import); ``build`` runs in the training process. Bounds keep one job's cost reasonable
(a forest of a million trees is refused, not started).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.ml.data import DataError


@dataclass(frozen=True)
class Param:
    kind: str  # "int" | "float" | "bool" | "choice" | "int_or_none" | "max_features"
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()


_INT_STATE = Param("int", 0, 2**31 - 1)

#: algorithm -> (tasks it supports, its parameters).
TABLE: dict[str, tuple[frozenset[str], dict[str, Param]]] = {
    "logistic_regression": (
        frozenset({"classification"}),
        {
            "C": Param("float", 1e-6, 1e6),
            "max_iter": Param("int", 10, 10_000),
            "fit_intercept": Param("bool"),
            "class_weight": Param("choice", choices=(None, "balanced")),
            "tol": Param("float", 1e-10, 1.0),
        },
    ),
    "linear_regression": (frozenset({"regression"}), {"fit_intercept": Param("bool")}),
    "ridge": (
        frozenset({"regression"}),
        {"alpha": Param("float", 0.0, 1e6), "fit_intercept": Param("bool")},
    ),
    "random_forest": (
        frozenset({"classification", "regression"}),
        {
            "n_estimators": Param("int", 1, 1000),
            "max_depth": Param("int_or_none", 1, 100),
            "min_samples_split": Param("int", 2, 10_000),
            "min_samples_leaf": Param("int", 1, 10_000),
            "max_features": Param("max_features"),
            "bootstrap": Param("bool"),
            "class_weight": Param("choice", choices=(None, "balanced")),
        },
    ),
    "hist_gradient_boosting": (
        frozenset({"classification", "regression"}),
        {
            "max_iter": Param("int", 1, 5000),
            "learning_rate": Param("float", 1e-4, 1.0),
            "max_leaf_nodes": Param("int_or_none", 2, 4096),
            "max_depth": Param("int_or_none", 1, 100),
            "min_samples_leaf": Param("int", 1, 100_000),
            "l2_regularization": Param("float", 0.0, 1e6),
            "max_bins": Param("int", 2, 255),
            "early_stopping": Param("choice", choices=("auto", True, False)),
            "class_weight": Param("choice", choices=(None, "balanced")),
        },
    ),
}


def check_params(algorithm: str, task: str, params: dict[str, Any]) -> dict[str, Any]:
    """The params, checked; raises :class:`DataError` naming the offending one."""
    if algorithm not in TABLE:
        raise DataError(f"unknown algorithm {algorithm!r}", {"algorithm": algorithm})
    tasks, table = TABLE[algorithm]
    if task not in tasks:
        raise DataError(
            f"{algorithm} does not do {task}; it does {', '.join(sorted(tasks))}",
            {"algorithm": algorithm, "task": task},
        )
    out: dict[str, Any] = {}
    for name, value in params.items():
        spec = table.get(name)
        if spec is None:
            raise DataError(
                f"unknown parameter {name!r} for {algorithm}; known: {', '.join(sorted(table))}",
                {"param": name},
            )
        if name == "class_weight" and task != "classification":
            raise DataError("class_weight is for classification only", {"param": name})
        out[name] = _check(name, spec, value)
    return out


def _check(name: str, spec: Param, value: Any) -> Any:
    bad = DataError(f"parameter {name!r}: {value!r} is not {_describe(spec)}", {"param": name})
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if spec.kind == "choice":
        if not any(value is c or (value == c and type(value) is type(c)) for c in spec.choices):
            raise bad
        return value
    if spec.kind == "max_features":
        if value is None or value in ("sqrt", "log2"):
            return value
        if isinstance(value, float) and 0.0 < value <= 1.0:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 10_000:
            return value
        raise bad
    if spec.kind == "int_or_none" and value is None:
        return None
    if spec.kind in ("int", "int_or_none"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad
    elif not isinstance(value, int | float) or isinstance(value, bool):
        raise bad
    assert spec.low is not None and spec.high is not None
    if not spec.low <= value <= spec.high:
        raise bad
    return value


def _describe(spec: Param) -> str:
    if spec.kind == "bool":
        return "a boolean"
    if spec.kind == "choice":
        return "one of " + ", ".join(repr(c) for c in spec.choices)
    if spec.kind == "max_features":
        return "null, 'sqrt', 'log2', a fraction in (0, 1] or a count"
    kind = "an integer" if spec.kind != "float" else "a number"
    tail = " or null" if spec.kind == "int_or_none" else ""
    return f"{kind} in [{spec.low:g}, {spec.high:g}]{tail}"


def build(algorithm: str, task: str, params: dict[str, Any], random_state: int) -> Any:
    """The scikit-learn estimator (imported here: only the training process needs it)."""
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classify = task == "classification"
    if algorithm == "logistic_regression":
        return make_pipeline(
            StandardScaler(), LogisticRegression(random_state=random_state, **params)
        )
    if algorithm == "linear_regression":
        return LinearRegression(**params)
    if algorithm == "ridge":
        return make_pipeline(StandardScaler(), Ridge(**params))
    if algorithm == "random_forest":
        cls = RandomForestClassifier if classify else RandomForestRegressor
        return cls(random_state=random_state, n_jobs=1, **params)
    if algorithm == "hist_gradient_boosting":
        cls = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
        return cls(random_state=random_state, **params)
    raise DataError(f"unknown algorithm {algorithm!r}")
