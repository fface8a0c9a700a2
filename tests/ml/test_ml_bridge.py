"""End to end through the real bridge (HTTP, JWT) and the real ML worker: train a
classifier on scikit-learn's breast-cancer data → the job succeeds with metrics → predict
by alias → move the alias to a new version → predictions switch; the routes are in the
OpenAPI document."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway_bridge.app import create_app
from tests.bridge_support import auth, bridge_settings, hs_token, http, serving
from tests.ml_support import unique

pytestmark = pytest.mark.usefixtures("ml_mesh")


def breast_cancer() -> tuple[list[dict], list[str]]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    names = [n.replace(" ", "_") for n in d.feature_names]
    rows = [
        {**dict(zip(names, map(float, x), strict=True)), "diagnosis": str(d.target_names[t])}
        for x, t in zip(d.data, d.target, strict=True)
    ]
    return rows, names


@pytest.fixture(scope="module")
async def bridge(settings):
    async with serving(create_app(bridge_settings(settings))) as url:
        yield url


async def finished(c, token: str, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = await c.get(f"/api/v1/ml/jobs/{job_id}", headers=auth(token))
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("succeeded", "failed", "cancelled"):
            return r.json()
        assert time.monotonic() < deadline, r.json()
        await asyncio.sleep(0.25)


async def test_train_predict_by_alias_and_move_the_alias(bridge) -> None:
    rows, names = breast_cancer()
    token = hs_token(tenant=unique("e2e"))
    probe = [{k: r[k] for k in names} for r in rows[:: len(rows) // 8]]
    async with http(bridge) as c:
        versions = {}
        for algorithm, params in (
            ("logistic_regression", {"C": 0.5, "max_iter": 500}),
            ("hist_gradient_boosting", {"max_iter": 50}),
        ):
            r = await c.post(
                "/api/v1/ml/jobs",
                headers=auth(token),
                json={
                    "name": "cancer",
                    "task": "classification",
                    "algorithm": algorithm,
                    "params": params,
                    "target": "diagnosis",
                    "dataset": {"rows": rows},
                },
            )
            assert r.status_code == 202, r.text
            assert r.json()["status"] == "queued"
            job = await finished(c, token, r.json()["job_id"])
            assert job["status"] == "succeeded", job
            assert job["metrics"]["accuracy"] > 0.9 and job["metrics"]["roc_auc"] > 0.95
            versions[algorithm] = job["version"]
        assert versions == {"logistic_regression": 1, "hist_gradient_boosting": 2}

        r = await c.put(
            "/api/v1/ml/models/cancer/aliases/champion", headers=auth(token), json={"version": 1}
        )
        assert r.status_code == 200, r.text
        r = await c.post(
            "/api/v1/ml/models/cancer/predict",
            headers=auth(token),
            json={"alias": "champion", "rows": probe},
        )
        assert r.status_code == 200, r.text
        before = r.json()
        assert before["version"] == 1 and len(before["predictions"]) == len(probe)
        assert set(before["predictions"]) <= {"malignant", "benign"}

        r = await c.put(
            "/api/v1/ml/models/cancer/aliases/champion", headers=auth(token), json={"version": 2}
        )
        assert r.json()["previous_version"] == 1
        r = await c.post(
            "/api/v1/ml/models/cancer/predict",
            headers=auth(token),
            json={"alias": "champion", "rows": probe},
        )
        after = r.json()
        direct = (
            await c.post(
                "/api/v1/ml/models/cancer/predict",
                headers=auth(token),
                json={"version": 2, "rows": probe},
            )
        ).json()
        assert after["version"] == 2
        assert after["probabilities"] == direct["probabilities"]
        assert after["probabilities"] != before["probabilities"]

        r = await c.get("/api/v1/ml/models/cancer", headers=auth(token))
        assert r.json()["aliases"] == {"champion": 2}
        r = await c.post(
            "/api/v1/ml/models/cancer/predict",
            headers=auth(token),
            json={"rows": [{**probe[0], "extra": 1.0}]},
        )
        assert r.status_code == 400 and "extra" in r.text

        # Another tenant sees none of it.
        other = hs_token(tenant=unique("e2e"))
        r = await c.get("/api/v1/ml/models/cancer", headers=auth(other))
        assert r.status_code == 404


async def test_the_ml_routes_are_in_the_openapi_document(bridge) -> None:
    async with http(bridge) as c:
        doc = (await c.get("/openapi.json")).json()
    paths = doc["paths"]
    for path in (
        "/api/v1/ml/jobs",
        "/api/v1/ml/jobs/{job_id}",
        "/api/v1/ml/jobs/{job_id}/cancel",
        "/api/v1/ml/models",
        "/api/v1/ml/models/{model}",
        "/api/v1/ml/models/{model}/predict",
        "/api/v1/ml/models/{model}/aliases/{alias}",
        "/api/v1/ml/models/{model}/versions/{version}",
        "/api/v1/ml/models/{model}/drift",
    ):
        assert path in paths, path
    assert "202" in paths["/api/v1/ml/jobs"]["post"]["responses"]
