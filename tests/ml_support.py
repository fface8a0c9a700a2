"""Helpers for the ML Service tests: the worker, datasets from scikit-learn, job polling."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from bus.client import Client
from bus.context import new_context
from bus.worker import WorkerEnv
from mesh.runner import serving
from schemas import ml
from schemas.context import Context
from schemas.ml import Job

IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def ctx(tenant: str, timeout: float = 30.0) -> Context:
    return new_context(tenant, user="tester", timeout=timeout)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def iris_rows() -> list[dict[str, Any]]:
    from sklearn.datasets import load_iris

    d = load_iris()
    return [
        {**dict(zip(IRIS_FEATURES, map(float, x), strict=True)), "species": str(d.target_names[t])}
        for x, t in zip(d.data, d.target, strict=True)
    ]


def mixed_rows(n: int, seed: int, shift: float = 0.0) -> list[dict[str, Any]]:
    """Numeric and categorical features; ``shift`` moves ``x1`` and skews ``color``."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(0.0 + shift, 1.0, n)
    x2 = rng.uniform(0, 10, n)
    colors = rng.choice(
        ["red", "green", "blue"], n, p=[0.7, 0.2, 0.1] if shift else [0.2, 0.3, 0.5]
    )
    return [
        {"x1": float(a), "x2": float(b), "color": str(c), "label": int(a + b / 5 > 1)}
        for a, b, c in zip(x1, x2, colors, strict=True)
    ]


@pytest.fixture(scope="module")
async def ml_mesh(env: WorkerEnv) -> AsyncIterator[None]:
    async with serving(["ml"], env):
        yield


async def train(client: Client, tenant: str, **request: Any) -> str:
    out = await client.call(ml.TRAIN, request, ctx(tenant))
    assert out.status == "queued"
    return out.job_id


async def wait_job(
    client: Client, tenant: str, job_id: str, timeout: float = 120.0, until: tuple[str, ...] = ()
) -> Job:
    """Poll until the job is finished (or in one of ``until``)."""
    done = until or ("succeeded", "failed", "cancelled")
    deadline = time.monotonic() + timeout
    while True:
        job = await client.call(ml.GET_JOB, ml.GetJobRequest(job_id=job_id), ctx(tenant))
        if job.status in done:
            return job
        assert time.monotonic() < deadline, f"job still {job.status} after {timeout}s"
        await asyncio.sleep(0.2)


async def train_iris(
    client: Client, tenant: str, name: str, algorithm: str = "logistic_regression", **params: Any
) -> Job:
    job_id = await train(
        client,
        tenant,
        name=name,
        task="classification",
        algorithm=algorithm,
        params=params,
        target="species",
        dataset={"rows": iris_rows()},
    )
    job = await wait_job(client, tenant, job_id)
    assert job.status == "succeeded", job.error
    return job
