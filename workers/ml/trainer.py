"""The training process: ``python -m workers.ml.trainer``, one per job (or model check).

The worker writes one msgpack request to stdin and reads one msgpack answer from stdout;
everything CPU-bound (parsing the dataset, fitting, converting to ONNX, checking an
uploaded model) happens here, so the worker's event loop never waits on it and the worker
can kill it (time limit, cancel, shutdown). The process dies with its parent
(``PR_SET_PDEATHSIG``) and runs under an address-space limit.

Answers: ``{"ok": true, ...}`` or ``{"ok": false, "code", "message", "details"}``.
Nothing here loads pickle or joblib: trained models leave as ONNX bytes, and an uploaded
file is only ever parsed as an ONNX protobuf.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import resource
import signal
import sys
import time
import traceback
from typing import Any

import msgpack

from workers.ml.data import DataError

#: ai.onnx and ai.onnx.ml opsets an uploaded model may import (onnxruntime 1.32 runs these).
MAX_OPSET = {"": 23, "ai.onnx": 23, "ai.onnx.ml": 5}
#: Target opsets of converted models.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
MIN_ROWS = 10
PARENT_ENV = "ML_TRAINER_PARENT"
MEMORY_ENV = "ML_TRAINER_MAX_BYTES"


def _die_with_parent() -> None:
    """SIGKILL this process when the worker that started it dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):
        os._exit(3)  # the parent died before prctl took effect


def _limit_memory() -> None:
    limit = int(os.environ.get(MEMORY_ENV, "0") or 0)
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main() -> None:
    _die_with_parent()
    _limit_memory()
    raw = sys.stdin.buffer.read()
    try:
        request = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        kind = request["kind"]
        if kind == "train":
            answer = train(request)
        elif kind == "check_model":
            answer = check_model(request)
        else:
            answer = _error("invalid_request", f"unknown kind {kind!r}")
    except DataError as exc:
        answer = _error("invalid_request", exc.message, exc.details)
    except MemoryError:
        answer = _error("payload_too_large", "training ran out of its memory limit")
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        answer = _error("internal", f"training failed: {type(exc).__name__}")
    sys.stdout.buffer.write(msgpack.packb(answer, use_bin_type=True))
    sys.stdout.buffer.flush()


def _error(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message, "details": details}


# ---------------------------------------------------------------- training


def _patch_skl2onnx() -> None:
    """skl2onnx 1.20 passes a Python ``False`` for leaf nodes in the integer attribute
    ``nodes_missing_value_tracks_true``; protobuf 7 refuses bools in int fields. Make it
    an int (only in this process)."""
    import skl2onnx.common.tree_ensemble as te

    original = te.add_node
    if getattr(original, "_mesh_patched", False):
        return

    def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
        return original(
            *args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs
        )

    add_node._mesh_patched = True  # type: ignore[attr-defined]
    te.add_node = add_node


def train(request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from workers.ml import algorithms, drift
    from workers.ml.data import columns_from_csv, columns_from_rows, prepare

    spec = request["spec"]
    data: bytes = request["data"]
    task = spec["task"]
    started = time.perf_counter()
    if request["format"] == "csv":
        names, cols = columns_from_csv(data)
        from_csv = True
    else:
        rows = msgpack.unpackb(data, raw=False)
        if not isinstance(rows, list):
            raise DataError("the dataset is not a list of rows")
        names, cols = columns_from_rows(rows)
        from_csv = False
    prepared = prepare(
        names,
        cols,
        target=spec["target"],
        task=task,
        declared=spec.get("features"),
        from_csv=from_csv,
        min_rows=MIN_ROWS,
    )
    X = prepared.X
    classes: list[Any] | None = None
    if task == "classification":
        classes = sorted(set(prepared.y), key=lambda v: (str(type(v)), v))
        index = {c: i for i, c in enumerate(classes)}
        y = np.asarray([index[v] for v in prepared.y], dtype=np.int64)
    else:
        y = np.asarray(prepared.y, dtype=np.float64)

    from sklearn.model_selection import train_test_split

    stratify = None
    if task == "classification":
        counts = np.bincount(y)
        n_test = max(1, int(round(spec["test_size"] * len(y))))
        if counts.min() >= 2 and n_test >= len(counts):
            stratify = y
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=spec["test_size"], random_state=spec["random_state"], stratify=stratify
    )
    if task == "classification" and len(np.unique(y_train)) < 2:
        raise DataError(
            f"target {spec['target']!r}: the training split has one class only; add rows",
            {"column": spec["target"]},
        )
    estimator = algorithms.build(spec["algorithm"], task, spec["params"], spec["random_state"])
    fit_started = time.perf_counter()
    estimator.fit(X_train, y_train)
    fit_s = time.perf_counter() - fit_started
    onnx_bytes = _to_onnx(estimator, X.shape[1], task)
    metrics = _metrics(estimator, task, X_test, y_test, len(classes or ()))
    metrics.update(_parity(onnx_bytes, estimator, task, X_test))
    metrics.update(
        {"n_train": float(len(y_train)), "n_test": float(len(y_test)), "fit_seconds": fit_s}
    )
    signature = {
        "task": task,
        "features": [f.as_dict() for f in prepared.features],
        "target": spec["target"],
        "classes": classes,
        "width": int(X.shape[1]),
    }
    return {
        "ok": True,
        "onnx": onnx_bytes,
        "metrics": metrics,
        "signature": signature,
        "reference": drift.reference(prepared.features, prepared.raw),
        "dataset_hash": hashlib.sha256(data).hexdigest(),
        "seconds": time.perf_counter() - started,
    }


def _to_onnx(estimator: Any, width: int, task: str) -> bytes:
    _patch_skl2onnx()
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = None
    if task == "classification":
        final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
        options = {id(final): {"zipmap": False}}
    model = convert_sklearn(
        estimator,
        initial_types=[("X", FloatTensorType([None, width]))],
        options=options,
        target_opset=TARGET_OPSET,
    )
    return bytes(model.SerializeToString())


def _metrics(estimator: Any, task: str, X: Any, y: Any, n_classes: int) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics as m

    pred = estimator.predict(X)
    if task == "regression":
        return {
            "rmse": float(np.sqrt(m.mean_squared_error(y, pred))),
            "mae": float(m.mean_absolute_error(y, pred)),
            "r2": float(m.r2_score(y, pred)) if len(y) > 1 else 0.0,
        }
    out = {
        "accuracy": float(m.accuracy_score(y, pred)),
        "f1": float(
            m.f1_score(y, pred, average="binary" if n_classes == 2 else "macro", zero_division=0)
        ),
    }
    if len(np.unique(y)) == n_classes:  # ROC-AUC needs every class in the holdout
        proba = estimator.predict_proba(X)
        out["roc_auc"] = float(
            m.roc_auc_score(y, proba[:, 1])
            if n_classes == 2
            else m.roc_auc_score(y, proba, multi_class="ovr", average="macro")
        )
    return out


def _parity(onnx_bytes: bytes, estimator: Any, task: str, X: Any) -> dict[str, float]:
    """How closely the ONNX model reproduces scikit-learn on the holdout."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out = session.run(None, {"X": X.astype(np.float32)})
    if task == "classification":
        return {"onnx_agreement": float(np.mean(out[0] == estimator.predict(X)))}
    diff = np.abs(out[0].ravel() - estimator.predict(X))
    return {"onnx_max_abs_diff": float(diff.max()) if diff.size else 0.0}


# ---------------------------------------------------------------- checking uploaded models


def check_model(request: dict[str, Any]) -> dict[str, Any]:
    """Accept ``data`` only if it is an ONNX model the declared signature can drive."""
    import numpy as np
    import onnx
    from google.protobuf.message import DecodeError

    data: bytes = request["data"]
    width: int = request["width"]
    task: str = request["task"]
    n_classes: int = request.get("n_classes") or 0
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or data[:2] == b"PK":
        raise DataError("not an ONNX model (this looks like a pickle or zip archive)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        raise DataError("not an ONNX model (it does not parse as an ONNX protobuf)") from None
    if not model.graph.node or not model.opset_import or model.ir_version < 3:
        raise DataError("not an ONNX model (no graph, opset or IR version)")
    for op in model.opset_import:
        top = MAX_OPSET.get(op.domain)
        if top is None:
            raise DataError(f"opset domain {op.domain!r} is not allowed (custom operators)")
        if op.version > top:
            raise DataError(f"opset {op.domain or 'ai.onnx'} {op.version} is newer than {top}")
    if model.functions:
        raise DataError("model-local functions are not accepted")
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise DataError(f"tensor {tensor.name!r} points at external data: not accepted")
    for node in _nodes(model.graph):
        if node.domain not in MAX_OPSET:
            raise DataError(f"operator {node.op_type!r} of domain {node.domain!r} not allowed")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise DataError(f"the ONNX model is invalid: {str(exc)[:300]}") from None
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if len(inputs) != 1:
        raise DataError(f"the model must take one input, it takes {len(inputs)}")
    tensor_type = inputs[0].type.tensor_type
    dims = tensor_type.shape.dim
    if tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 2:
        raise DataError("the model's input must be a 2-D float tensor [rows, features]")
    if dims[1].HasField("dim_value") and dims[1].dim_value != width:
        raise DataError(
            f"the model's input has {dims[1].dim_value} columns; the declared features"
            f" encode to {width}",
            {"expected": width, "got": dims[1].dim_value},
        )

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {inputs[0].name: np.zeros((2, width), dtype=np.float32)})
    except Exception as exc:
        raise DataError(f"onnxruntime cannot run the model: {str(exc)[:300]}") from None
    if task == "classification":
        if len(outputs) < 2 or np.asarray(outputs[1]).shape != (2, n_classes):
            raise DataError(
                f"a classifier must output labels and probabilities [rows, {n_classes}]"
            )
    elif np.asarray(outputs[0]).size != 2:
        raise DataError("a regressor must output one value per row")
    return {"ok": True, "sha256": hashlib.sha256(data).hexdigest(), "input": inputs[0].name}


def _tensors(graph: Any) -> Any:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _nodes(graph: Any) -> Any:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _nodes(attr.g)
            for g in attr.graphs:
                yield from _nodes(g)


if __name__ == "__main__":
    main()
