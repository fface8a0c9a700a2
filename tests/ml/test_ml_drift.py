"""Drift reports: a sample shifted from the training data is flagged (on the shifted
features only), a fresh sample of the same distribution is not; without rows, the report
uses the inputs recent predictions kept."""

from __future__ import annotations

import pytest

from bus.client import Client
from bus.errors import InvalidRequest
from schemas import ml
from tests.ml_support import ctx, mixed_rows, train, unique, wait_job

pytestmark = pytest.mark.usefixtures("ml_mesh")


def features_only(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "label"} for r in rows]


@pytest.fixture(scope="module")
async def trained(env) -> str:
    client = Client(env.nc)
    tenant = unique("drift")
    job_id = await train(
        client,
        tenant,
        name="mixed",
        task="classification",
        algorithm="hist_gradient_boosting",
        params={"max_iter": 30},
        target="label",
        dataset={"rows": mixed_rows(3000, seed=1)},
    )
    job = await wait_job(client, tenant, job_id)
    assert job.status == "succeeded", job.error
    return tenant


async def test_a_fresh_sample_of_the_same_distribution_does_not_drift(
    client: Client, trained: str
) -> None:
    rows = features_only(mixed_rows(800, seed=2))
    out = await client.call(ml.DRIFT, {"model": "mixed", "rows": rows}, ctx(trained))
    assert out.rows == 800 and out.reference_rows == 3000
    assert not out.drifted, out.features
    by_name = {f.name: f for f in out.features}
    assert set(by_name) == {"x1", "x2", "color"}
    assert by_name["x1"].test == "ks" and by_name["x1"].distance_metric == "psi"
    assert by_name["color"].test == "chi2" and by_name["color"].distance_metric == "js"
    assert all(f.p_value is not None and f.p_value > 0.01 for f in out.features)


async def test_a_shifted_sample_drifts_on_the_shifted_features(
    client: Client, trained: str
) -> None:
    rows = features_only(mixed_rows(800, seed=3, shift=1.5))
    out = await client.call(ml.DRIFT, {"model": "mixed", "rows": rows}, ctx(trained))
    assert out.drifted
    drifted = {f.name for f in out.features if f.drifted}
    assert drifted == {"x1", "color"}
    x1 = next(f for f in out.features if f.name == "x1")
    assert x1.statistic > 0.3 and x1.p_value is not None and x1.p_value < 1e-6


async def test_without_rows_the_inputs_of_recent_predictions_are_compared(
    client: Client, trained: str
) -> None:
    shifted = features_only(mixed_rows(600, seed=4, shift=2.0))
    for start in range(0, 600, 100):
        await client.call(
            ml.PREDICT, {"model": "mixed", "rows": shifted[start : start + 100]}, ctx(trained)
        )
    out = await client.call(ml.DRIFT, {"model": "mixed"}, ctx(trained))
    assert out.rows >= 100
    assert out.drifted and {"x1", "color"} <= {f.name for f in out.features if f.drifted}


async def test_drift_rows_are_checked_against_the_signature(client: Client, trained: str) -> None:
    rows = features_only(mixed_rows(30, seed=5))
    rows[3]["x2"] = "ten"
    with pytest.raises(InvalidRequest, match="row 3 feature 'x2'"):
        await client.call(ml.DRIFT, {"model": "mixed", "rows": rows}, ctx(trained))
