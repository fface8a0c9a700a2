"""ML Service training and prediction on the real worker (NATS, JetStream, Postgres): a
job goes queued → running → succeeded with metrics; bad data fails the job with
invalid_request naming the column and row; rows that do not match the signature are
refused naming the feature; cancel and the time limit stop the training process."""

from __future__ import annotations

import pytest

from bus.client import Client
from bus.errors import InvalidRequest, NotFound
from schemas import ml
from tests.ml_support import (
    IRIS_FEATURES,
    ctx,
    iris_rows,
    train,
    train_iris,
    unique,
    wait_job,
)

pytestmark = pytest.mark.usefixtures("ml_mesh")


async def test_a_classifier_trains_and_predicts_with_probabilities(client: Client) -> None:
    tenant = unique("ml")
    job = await train_iris(client, tenant, "iris")
    assert job.model == "iris" and job.version == 1 and job.attempts == 1
    assert job.metrics and job.metrics["accuracy"] > 0.8 and "f1" in job.metrics
    assert "roc_auc" in job.metrics and job.metrics["onnx_agreement"] > 0.9

    rows = [r for r in iris_rows() if True][::50]  # one of each species
    for r in rows:
        r.pop("species")
    out = await client.call(ml.PREDICT, {"model": "iris", "rows": rows}, ctx(tenant))
    assert out.version == 1
    assert out.predictions == ["setosa", "versicolor", "virginica"]
    assert out.probabilities and len(out.probabilities[0]) == 3
    assert abs(sum(out.probabilities[0]) - 1) < 1e-3

    model = await client.call(ml.GET_MODEL, {"model": "iris"}, ctx(tenant))
    v = model.versions[0]
    assert v.signature.features[0].name == "sepal_length"
    assert v.signature.classes == ["setosa", "versicolor", "virginica"]
    assert v.job_id == job.job_id and v.dataset_hash and len(v.artifact_sha256) == 64


async def test_a_regressor_reports_rmse_mae_r2(client: Client) -> None:
    tenant = unique("ml")
    rows = [{"x": float(i), "c": "a" if i % 2 else "b", "y": 3.0 * i + (i % 2)} for i in range(60)]
    job_id = await train(
        client,
        tenant,
        name="line",
        task="regression",
        algorithm="linear_regression",
        target="y",
        dataset={"rows": rows},
    )
    job = await wait_job(client, tenant, job_id)
    assert job.status == "succeeded", job.error
    assert job.metrics and job.metrics["r2"] > 0.99 and {"rmse", "mae"} <= set(job.metrics)
    out = await client.call(
        ml.PREDICT, {"model": "line", "rows": [{"x": 10.0, "c": "b"}]}, ctx(tenant)
    )
    assert out.probabilities is None and abs(out.predictions[0] - 30.0) < 0.5


def _rows_missing_target() -> list[dict]:
    rows = iris_rows()
    del rows[7]["species"]
    return rows


def _rows_with_text_in_numeric() -> list[dict]:
    rows = iris_rows()
    rows[17]["sepal_width"] = "abc"
    return rows


BAD_DATA = [
    pytest.param(_rows_missing_target(), "species", 7, "target is missing", id="missing-target"),
    pytest.param(
        _rows_with_text_in_numeric(), "sepal_width", 17, "is not a number", id="text-in-numeric"
    ),
    pytest.param(iris_rows()[:4], None, None, "too few rows", id="too-few-rows"),
    pytest.param(
        [*iris_rows()[:20], {**iris_rows()[20], "species": ["x"]}, *iris_rows()[21:]],
        "species",
        20,
        "is not a label",
        id="nested-target",
    ),
    pytest.param(iris_rows()[:40], "species", None, "one class only", id="one-class"),
]


@pytest.mark.parametrize(("rows", "column", "row", "words"), BAD_DATA)
async def test_bad_data_fails_the_job_naming_column_and_row(
    client: Client, rows: list[dict], column: str | None, row: int | None, words: str
) -> None:
    tenant = unique("ml")
    job_id = await train(
        client,
        tenant,
        name="bad",
        task="classification",
        algorithm="random_forest",
        target="species",
        dataset={"rows": rows},
    )
    job = await wait_job(client, tenant, job_id)
    assert job.status == "failed"
    assert job.error_code == "invalid_request" and job.error
    assert words in job.error
    if column is not None:
        assert f"'{column}'" in job.error and job.error_details["column"] == column
    if row is not None:
        assert f"row {row}" in job.error and job.error_details["row"] == row
    with pytest.raises(NotFound):
        await client.call(ml.GET_MODEL, {"model": "bad"}, ctx(tenant))


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"n_estimators": 0}, "n_estimators"),
        ({"n_estimators": "many"}, "n_estimators"),
        ({"max_depht": 3}, "max_depht"),
    ],
)
async def test_hyper_parameters_are_checked_against_the_algorithm(
    client: Client, params: dict, named: str
) -> None:
    with pytest.raises(InvalidRequest, match=named):
        await train(
            client,
            unique("ml"),
            name="p",
            task="classification",
            algorithm="random_forest",
            params=params,
            target="species",
            dataset={"rows": iris_rows()},
        )


async def test_an_algorithm_outside_the_allow_list_is_refused(client: Client) -> None:
    with pytest.raises(InvalidRequest):
        await train(
            client,
            unique("ml"),
            name="p",
            task="classification",
            algorithm="pickle_loader",
            target="species",
            dataset={"rows": iris_rows()},
        )


@pytest.mark.parametrize(
    ("row", "named"),
    [
        ({"sepal_length": 5.0, "sepal_width": 3.0, "petal_length": 1.4}, "petal_width"),
        ({**dict.fromkeys(IRIS_FEATURES, 1.0), "colour": "red"}, "colour"),
        ({**dict.fromkeys(IRIS_FEATURES, 1.0), "sepal_width": "wide"}, "sepal_width"),
        ({**dict.fromkeys(IRIS_FEATURES, 1.0), "petal_length": {"$gt": 1}}, "petal_length"),
    ],
    ids=["missing", "extra", "mistyped", "nested"],
)
async def test_rows_not_matching_the_signature_are_refused_naming_the_feature(
    client: Client, row: dict, named: str
) -> None:
    tenant = unique("ml")
    await train_iris(client, tenant, "iris")
    good = dict.fromkeys(IRIS_FEATURES, 1.0)
    with pytest.raises(InvalidRequest) as err:
        await client.call(ml.PREDICT, {"model": "iris", "rows": [good, row]}, ctx(tenant))
    assert f"row 1 feature '{named}'" in err.value.message
    assert err.value.details[0]["row"] == 1 and err.value.details[0]["feature"] == named


async def test_more_than_1000_rows_is_refused(client: Client) -> None:
    rows = [dict.fromkeys(IRIS_FEATURES, 1.0)] * 1001
    with pytest.raises(InvalidRequest):
        await client.call(ml.PREDICT, {"model": "iris", "rows": rows}, ctx(unique("ml")))


def _slow_job(name: str, time_limit_s: int = 600) -> dict:
    rows = iris_rows() * 40  # 6,000 rows; a big forest takes a while on a shared machine
    return {
        "name": name,
        "task": "classification",
        "algorithm": "random_forest",
        "params": {"n_estimators": 1000, "max_features": None},
        "target": "species",
        "dataset": {"rows": rows},
        "time_limit_s": time_limit_s,
    }


async def test_cancel_kills_a_running_training(client: Client) -> None:
    tenant = unique("ml")
    job_id = await train(client, tenant, **_slow_job("slow"))
    await wait_job(client, tenant, job_id, until=("running",))
    out = await client.call(ml.CANCEL_JOB, {"job_id": job_id}, ctx(tenant))
    assert out.status == "cancelled"
    # The job stays cancelled: the process is killed, nothing is registered.
    job = await wait_job(client, tenant, job_id)
    assert job.status == "cancelled" and job.version is None
    with pytest.raises(NotFound):
        await client.call(ml.GET_MODEL, {"model": "slow"}, ctx(tenant))


async def test_the_time_limit_fails_the_job(client: Client) -> None:
    tenant = unique("ml")
    job_id = await train(client, tenant, **_slow_job("slow", time_limit_s=2))
    job = await wait_job(client, tenant, job_id)
    assert job.status == "failed" and job.error_code == "timeout"
    assert "time limit of 2 s" in (job.error or "")


async def test_jobs_are_listed_newest_first_for_their_tenant_only(client: Client) -> None:
    tenant = unique("ml")
    first = await train(client, tenant, **_slow_job("a", time_limit_s=1))
    second = await train(client, tenant, **_slow_job("b", time_limit_s=1))
    out = await client.call(ml.LIST_JOBS, {"limit": 10}, ctx(tenant))
    assert [j.job_id for j in out.jobs] == [second, first]
    other = await client.call(ml.LIST_JOBS, {}, ctx(unique("ml")))
    assert other.jobs == []
    for job_id in (first, second):
        await wait_job(client, tenant, job_id)
