"""The ML registry: numbered immutable versions, aliases that move atomically (and what
predictions use follows them), delete refused while aliased, and tenant isolation."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bus.client import Client
from bus.errors import Conflict, NotFound
from schemas import ml
from tests.ml_support import IRIS_FEATURES, ctx, iris_rows, train_iris, unique, wait_job

pytestmark = pytest.mark.usefixtures("ml_mesh")

ROW = {"sepal_length": 6.0, "sepal_width": 2.9, "petal_length": 4.5, "petal_width": 1.5}


@pytest.fixture(scope="module")
async def two_versions(env) -> tuple[str, str]:
    """Tenant A's model ``flowers`` with version 1 (logistic) and 2 (forest)."""
    client = Client(env.nc)
    tenant = unique("reg")
    await train_iris(client, tenant, "flowers")
    await train_iris(client, tenant, "flowers", "random_forest", n_estimators=5)
    return tenant, "flowers"


async def test_versions_are_numbered_and_carry_lineage(client: Client, two_versions) -> None:
    tenant, name = two_versions
    model = await client.call(ml.GET_MODEL, {"model": name}, ctx(tenant))
    assert model.latest_version == 2
    assert [v.version for v in model.versions] == [2, 1]
    assert [v.algorithm for v in model.versions] == ["random_forest", "logistic_regression"]
    assert model.versions[0].params == {"n_estimators": 5}
    assert all(v.job_id and v.dataset_hash for v in model.versions)
    assert model.versions[0].dataset_hash == model.versions[1].dataset_hash
    listed = await client.call(ml.LIST_MODELS, {}, ctx(tenant))
    assert [(m.name, m.latest_version) for m in listed.models] == [(name, 2)]


async def test_an_alias_moves_and_predictions_follow(client: Client, two_versions) -> None:
    tenant, name = two_versions
    first = await client.call(
        ml.SET_ALIAS, {"model": name, "alias": "champion", "version": 1}, ctx(tenant)
    )
    assert first.previous_version is None
    out = await client.call(
        ml.PREDICT, {"model": name, "alias": "champion", "rows": [ROW]}, ctx(tenant)
    )
    assert out.version == 1
    moved = await client.call(
        ml.SET_ALIAS, {"model": name, "alias": "champion", "version": 2}, ctx(tenant)
    )
    assert moved.previous_version == 1
    out = await client.call(
        ml.PREDICT, {"model": name, "alias": "champion", "rows": [ROW]}, ctx(tenant)
    )
    assert out.version == 2
    model = await client.call(ml.GET_MODEL, {"model": name}, ctx(tenant))
    assert model.aliases == {"champion": 2}
    assert model.versions[0].aliases == ["champion"]


async def test_an_alias_cannot_point_at_a_missing_version(client: Client, two_versions) -> None:
    tenant, name = two_versions
    with pytest.raises(NotFound):
        await client.call(ml.SET_ALIAS, {"model": name, "alias": "x", "version": 9}, ctx(tenant))


async def test_an_aliased_version_cannot_be_deleted(client: Client, env) -> None:
    tenant = unique("reg")
    await train_iris(client, tenant, "m")
    await train_iris(client, tenant, "m")
    await client.call(ml.SET_ALIAS, {"model": "m", "alias": "prod", "version": 1}, ctx(tenant))
    with pytest.raises(Conflict, match="prod"):
        await client.call(ml.DELETE_VERSION, {"model": "m", "version": 1}, ctx(tenant))
    await client.call(ml.SET_ALIAS, {"model": "m", "alias": "prod", "version": 2}, ctx(tenant))
    out = await client.call(ml.DELETE_VERSION, {"model": "m", "version": 1}, ctx(tenant))
    assert out.deleted
    with pytest.raises(NotFound):
        await client.call(ml.PREDICT, {"model": "m", "version": 1, "rows": [ROW]}, ctx(tenant))
    model = await client.call(ml.GET_MODEL, {"model": "m"}, ctx(tenant))
    assert [v.version for v in model.versions] == [2]
    # Numbers are never reused: the next version is 3.
    job = await train_iris(client, tenant, "m")
    assert job.version == 3


async def test_predictions_are_counted_per_version(client: Client, two_versions) -> None:
    tenant, name = two_versions
    for _ in range(3):
        await client.call(
            ml.PREDICT, {"model": name, "version": 1, "rows": [ROW, ROW]}, ctx(tenant)
        )
    # Counters are written in batches (about every second): wait for them.
    deadline = time.monotonic() + 30
    while True:
        model = await client.call(ml.GET_MODEL, {"model": name}, ctx(tenant))
        v1 = next(v for v in model.versions if v.version == 1)
        if v1.predictions >= 6 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert v1.predictions >= 6 and v1.mean_latency_ms is not None


async def test_tenant_b_cannot_see_predict_with_or_alias_tenant_a_models(
    client: Client, two_versions
) -> None:
    tenant_a, name = two_versions
    b = ctx(unique("other"))
    assert (await client.call(ml.LIST_MODELS, {}, b)).models == []
    with pytest.raises(NotFound):
        await client.call(ml.GET_MODEL, {"model": name}, b)
    with pytest.raises(NotFound):
        await client.call(ml.PREDICT, {"model": name, "rows": [ROW]}, b)
    with pytest.raises(NotFound):
        await client.call(ml.PREDICT, {"model": name, "alias": "champion", "rows": [ROW]}, b)
    with pytest.raises(NotFound):
        await client.call(ml.SET_ALIAS, {"model": name, "alias": "mine", "version": 1}, b)
    with pytest.raises(NotFound):
        await client.call(ml.DELETE_VERSION, {"model": name, "version": 1}, b)
    with pytest.raises(NotFound):
        await client.call(ml.DRIFT, {"model": name, "rows": [ROW] * 20}, b)
    a_jobs = await client.call(ml.LIST_JOBS, {}, ctx(tenant_a))
    with pytest.raises(NotFound):
        await client.call(ml.GET_JOB, {"job_id": a_jobs.jobs[0].job_id}, b)
    with pytest.raises(NotFound):
        await client.call(ml.CANCEL_JOB, {"job_id": a_jobs.jobs[0].job_id}, b)
    # A's model is untouched.
    model = await client.call(ml.GET_MODEL, {"model": name}, ctx(tenant_a))
    assert "mine" not in model.aliases and len(model.versions) == 2


async def test_a_dataset_object_of_another_tenant_is_not_found(client: Client, env) -> None:
    from bus.uploads import put_stream

    csv = ("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40))).encode()
    stored = await put_stream(env.js, unique("owner"), [csv], max_bytes=1 << 20)
    with pytest.raises(NotFound):
        await client.call(
            ml.TRAIN,
            {
                "name": "stolen",
                "task": "classification",
                "algorithm": "logistic_regression",
                "target": "y",
                "dataset": {"object": stored.name},
            },
            ctx(unique("thief")),
        )


async def test_a_csv_uploaded_with_mesh_upload_trains(
    client: Client, settings, tmp_path: Path
) -> None:
    tenant = unique("csv")
    header = ",".join([*IRIS_FEATURES, "species"])
    lines = [header] + [
        ",".join(str(r[k]) for k in [*IRIS_FEATURES, "species"]) for r in iris_rows()
    ]
    path = tmp_path / "iris.csv"
    path.write_text("\n".join(lines) + "\n")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "mesh", "upload", str(path), "--tenant", tenant],
        env={**os.environ, "NATS_URL": settings.nats_url, "LOG_LEVEL": "warning"},
        capture_output=True,
        timeout=60,
        check=True,
    )
    ref = json.loads(done.stdout)
    assert ref["filename"] == "iris.csv" and ref["size"] == path.stat().st_size
    stored = SimpleNamespace(name=ref["name"])
    out = await client.call(
        ml.TRAIN,
        {
            "name": "iris-csv",
            "task": "classification",
            "algorithm": "hist_gradient_boosting",
            "params": {"max_iter": 20},
            "target": "species",
            "dataset": {"object": stored.name},
        },
        ctx(tenant),
    )
    job = await wait_job(client, tenant, out.job_id)
    assert job.status == "succeeded", job.error
    assert job.metrics and job.metrics["accuracy"] > 0.8
