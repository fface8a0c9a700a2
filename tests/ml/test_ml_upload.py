"""Offering a model file: only ONNX is accepted, after checks. A crafted pickle (any
protocol), a shell script and an ONNX file that points at external data are refused, and
nothing in them runs: the canary file they would create never appears."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest

from bus.client import Client
from bus.errors import InvalidRequest, NotFound, PayloadTooLarge
from bus.uploads import put_stream
from schemas import ml
from tests.ml_support import IRIS_FEATURES, ctx, iris_rows, unique

pytestmark = pytest.mark.usefixtures("ml_mesh")

FEATURES = [{"name": f, "type": "numeric"} for f in IRIS_FEATURES]
CLASSES = ["setosa", "versicolor", "virginica"]


class _Canary:
    """Unpickling this creates the canary file (``open(path, "w")``)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Shell:
    """Unpickling this runs a shell command that creates the canary."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def iris_onnx() -> bytes:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    X = np.asarray([[r[f] for f in IRIS_FEATURES] for r in iris_rows()], dtype=np.float32)
    y = np.asarray([CLASSES.index(r["species"]) for r in iris_rows()])
    clf = LogisticRegression(max_iter=500).fit(X, y)
    return to_onnx(clf, X[:1], options={"zipmap": False}).SerializeToString()


async def offer(
    client: Client, env, tenant: str, data: bytes, name: str = "up"
) -> ml.UploadModelResponse:
    stored = await put_stream(env.js, tenant, [data], max_bytes=1 << 24)
    return await client.call(
        ml.UPLOAD_MODEL,
        {
            "name": name,
            "object": stored.name,
            "task": "classification",
            "features": FEATURES,
            "classes": CLASSES,
        },
        ctx(tenant),
    )


def crafted(kind: str, canary: Path) -> bytes:
    if kind == "pickle-open":
        return pickle.dumps(_Canary(canary), protocol=pickle.HIGHEST_PROTOCOL)
    if kind == "pickle-shell-protocol0":
        return pickle.dumps(_Shell(canary), protocol=0)  # text pickle: no binary magic
    if kind == "shell-script":
        return f"#!/bin/sh\ntouch {canary}\n".encode()
    if kind == "external-data":
        model = onnx.load_from_string(iris_onnx())
        tensor = model.graph.initializer.add()
        tensor.name, tensor.data_type = "weights", onnx.TensorProto.FLOAT
        tensor.dims.append(1024)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", str(canary)
        return model.SerializeToString()
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["pickle-open", "pickle-shell-protocol0", "shell-script", "external-data"]
)
async def test_a_crafted_model_file_is_refused_and_nothing_runs(
    client: Client, env, tmp_path: Path, kind: str
) -> None:
    canary = tmp_path / "canary"
    tenant = unique("up")
    with pytest.raises(InvalidRequest) as err:
        await offer(client, env, tenant, crafted(kind, canary))
    assert "ONNX" in err.value.message or "external data" in err.value.message
    assert not canary.exists()
    with pytest.raises(NotFound):
        await client.call(ml.GET_MODEL, {"model": "up"}, ctx(tenant))


async def test_an_onnx_model_with_the_declared_signature_is_registered_and_serves(
    client: Client, env
) -> None:
    tenant = unique("up")
    out = await offer(client, env, tenant, iris_onnx())
    assert out.version == 1
    rows = [{f: r[f] for f in IRIS_FEATURES} for r in iris_rows()[::50]]
    pred = await client.call(ml.PREDICT, {"model": "up", "rows": rows}, ctx(tenant))
    assert pred.predictions == CLASSES
    model = await client.call(ml.GET_MODEL, {"model": "up"}, ctx(tenant))
    assert model.versions[0].source == "uploaded"
    assert model.versions[0].artifact_sha256 == out.artifact_sha256


async def test_an_onnx_model_whose_input_does_not_match_the_features_is_refused(
    client: Client, env
) -> None:
    tenant = unique("up")
    stored = await put_stream(env.js, tenant, [iris_onnx()], max_bytes=1 << 24)
    with pytest.raises(InvalidRequest, match="columns"):
        await client.call(
            ml.UPLOAD_MODEL,
            {
                "name": "up",
                "object": stored.name,
                "task": "classification",
                "features": FEATURES[:3],
                "classes": CLASSES,
            },
            ctx(tenant),
        )


async def test_an_oversized_model_file_is_refused_before_it_is_read(
    client: Client, env, monkeypatch
) -> None:
    tenant = unique("up")
    big = b"\x08\x07" + b"\x00" * (65 * 1024 * 1024)
    with pytest.raises(PayloadTooLarge):
        await offer(client, env, tenant, big)
