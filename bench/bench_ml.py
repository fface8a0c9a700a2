"""ML Service figures, each against an in-process baseline in the same run.

Starts embedded NATS and Postgres (``mesh.infra.embedded``) and the ML worker as its own
process (``python -m mesh worker ml``, the production shape); this process drives it.

1. Training: a 100,000 x 20 CSV (18 numeric, 2 categorical features, binary label) is put
   in the uploads object store and trained with histogram gradient boosting through
   ``ml.train`` (submit → succeeded: process start, CSV parsing and checks, fit, ONNX
   conversion, holdout metrics, drift reference, registration). Baseline: the same
   ``HistGradientBoostingClassifier`` fitted here on the already-encoded arrays.
2. Prediction with that model: ``ml.predict`` over the mesh (one row: p50/p99 of
   sequential calls; 1,000-row batches) against onnxruntime called in this process on the
   same ONNX bytes (read from the registry), with and without the row checks/encoding.
3. Drift: 100,000 current rows against the 100,000-row training reference with the
   worker's own code (checks + KS/PSI + chi²/JS), against scipy's exact ``ks_2samp`` on
   the raw columns; and ``ml.drift`` over the mesh with 2,000 rows (its request limit).

    .venv/bin/python bench/bench_ml.py [--rows 100000] [--one-row 500] [--batches 30]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bus.breaker import BreakerConfig
from bus.client import Client
from bus.connection import connect
from bus.context import new_context
from bus.errors import Unavailable
from bus.jetstream import ensure_streams
from bus.postgres import create_database
from bus.settings import Settings
from bus.telemetry import setup_logging
from bus.uploads import put_stream
from mesh.infra import embedded
from schemas import ml

TENANT = "bench"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
N_NUMERIC = 18
COLORS = ["red", "green", "blue", "black", "white"]
SIZES = ["S", "M", "L"]


def dataset(n: int, seed: int, shift: float = 0.0) -> tuple[list[str], list[list[Any]]]:
    rng = np.random.default_rng(seed)
    X = rng.normal(shift, 1.0, (n, N_NUMERIC))
    color = rng.choice(COLORS, n)
    size = rng.choice(SIZES, n, p=[0.5, 0.3, 0.2])
    logit = X[:, 0] - 0.5 * X[:, 1] + 0.8 * X[:, 2] * X[:, 3] + (color == "red") * 0.7
    label = (logit + rng.normal(0, 0.5, n) > 0).astype(int)
    names = [f"x{i}" for i in range(N_NUMERIC)] + ["color", "size", "label"]
    rows = [
        [*(round(float(v), 5) for v in X[i]), str(color[i]), str(size[i]), int(label[i])]
        for i in range(n)
    ]
    return names, rows


def to_csv(names: list[str], rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    out.write(",".join(names) + "\n")
    for r in rows:
        out.write(",".join(map(str, r)) + "\n")
    return out.getvalue().encode()


def as_dicts(names: list[str], rows: list[list[Any]]) -> list[dict[str, Any]]:
    feats = names[:-1]
    return [dict(zip(feats, r[:-1], strict=True)) for r in rows]


def pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1]


async def ready(client: Client) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            await client.call(ml.LIST_JOBS, {}, new_context(TENANT, timeout=2.0))
            return
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def drive(settings: Settings, args: argparse.Namespace) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    from workers.ml import drift
    from workers.ml.data import (
        check_rows,
        columns_from_csv,
        encode_rows,
        features_of,
        prepare,
    )

    assert settings.nats_url and settings.database_url
    nc = await connect(settings.nats_url, name="bench-ml")
    js = nc.jetstream()
    await ensure_streams(js)
    client = Client(nc, breaker=BreakerConfig(failure_threshold=1_000_000))
    try:
        await ready(client)
        names, rows = dataset(args.rows, seed=1)
        body = to_csv(names, rows)
        stored = await put_stream(js, TENANT, [body], max_bytes=len(body) + 1)
        print(
            f"dataset: {args.rows} rows x {len(names) - 1} features, CSV {len(body) / 1e6:.1f} MB"
        )

        # ---- 1. training
        started = time.perf_counter()
        out = await client.call(
            ml.TRAIN,
            {
                "name": "bench",
                "task": "classification",
                "algorithm": "hist_gradient_boosting",
                "target": "label",
                "dataset": {"object": stored.name},
            },
            new_context(TENANT),
        )
        while True:
            job = await client.call(
                ml.GET_JOB, {"job_id": out.job_id}, new_context(TENANT, timeout=5)
            )
            if job.status in ("succeeded", "failed", "cancelled"):
                break
            await asyncio.sleep(0.1)
        train_s = time.perf_counter() - started
        assert job.status == "succeeded", job.error
        assert job.metrics
        cols_names, cols = columns_from_csv(body)
        prepared = prepare(
            cols_names,
            cols,
            target="label",
            task="classification",
            declared=None,
            from_csv=True,
            min_rows=10,
        )
        y = np.asarray(prepared.y)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):  # the job's own setting (ML_TRAIN_THREADS=1)
            t = time.perf_counter()
            HistGradientBoostingClassifier(random_state=0).fit(prepared.X, y)
            baseline_fit = time.perf_counter() - t
        print("\n1. training, histogram gradient boosting (default params, 1 thread in the job)")
        print(f"   ml.train submit -> succeeded   {train_s:8.2f} s")
        print(f"     of which fit (in the job)     {job.metrics['fit_seconds']:8.2f} s")
        print(f"   in-process fit, same arrays     {baseline_fit:8.2f} s")
        print(
            f"   holdout accuracy {job.metrics['accuracy']:.3f}"
            f"  roc_auc {job.metrics['roc_auc']:.3f}"
            f"  onnx agreement {job.metrics['onnx_agreement']:.4f}"
        )

        # ---- 2. prediction
        import onnxruntime as ort

        db = await create_database(settings.database_url)
        async with db.connection() as conn:
            rec = await conn.fetchrow(
                "SELECT artifact, signature FROM ml.versions WHERE tenant_id = $1"
                " AND model = 'bench' AND version = 1",
                TENANT,
            )
        await db.close()
        import json

        signature = json.loads(rec["signature"])
        features = features_of(signature)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(
            bytes(rec["artifact"]), opts, providers=["CPUExecutionProvider"]
        )
        test_names, test_rows = dataset(2000, seed=2)
        dicts = as_dicts(test_names, test_rows)
        one = [dicts[0]]
        batch = dicts[:1000]

        async def mesh(rows: list[dict[str, Any]], n: int) -> list[float]:
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                await client.call(
                    ml.PREDICT, {"model": "bench", "rows": rows}, new_context(TENANT, timeout=10)
                )
                samples.append((time.perf_counter() - t0) * 1000)
            return samples

        def local(rows: list[dict[str, Any]], n: int, encode: bool) -> list[float]:
            X = encode_rows(features, rows)
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                if encode:
                    X = encode_rows(features, rows)
                session.run(None, {"X": X})
                samples.append((time.perf_counter() - t0) * 1000)
            return samples

        async def get_job(n: int) -> list[float]:
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                await client.call(
                    ml.GET_JOB, {"job_id": out.job_id}, new_context(TENANT, timeout=10)
                )
                samples.append((time.perf_counter() - t0) * 1000)
            return samples

        await mesh(one, 50)  # warm-up: session cache, connections
        local(one, 50, True)
        results = {
            "ml.get_job over the mesh (1 query, no model)": await get_job(args.one_row),
            "1 row, ml.predict over the mesh": await mesh(one, args.one_row),
            "1 row, in-process encode + run": local(one, args.one_row, True),
            "1 row, in-process run only": local(one, args.one_row, False),
            "1,000 rows, ml.predict over the mesh": await mesh(batch, args.batches),
            "1,000 rows, in-process encode + run": local(batch, args.batches, True),
            "1,000 rows, in-process run only": local(batch, args.batches, False),
        }
        print("\n2. prediction (same ONNX model; sequential calls)")
        print(f"   {'case':<46}{'p50 ms':>9}{'p99 ms':>9}")
        for name, s in results.items():
            print(f"   {name:<46}{statistics.median(s):>9.3f}{pct(s, 99):>9.3f}")

        # ---- 3. drift
        cur_names, cur_rows = dataset(args.rows, seed=3, shift=0.05)
        cur = as_dicts(cur_names, cur_rows)
        async with (db := await create_database(settings.database_url)).connection() as conn:
            ref = json.loads(
                await conn.fetchval(
                    "SELECT reference FROM ml.versions WHERE tenant_id = $1 AND model = 'bench'",
                    TENANT,
                )
            )
        await db.close()
        t = time.perf_counter()
        checked = check_rows(features, cur)
        report = drift.compare(features, ref, checked)
        ours = time.perf_counter() - t
        from scipy.stats import ks_2samp

        t = time.perf_counter()
        for f in features:
            if f.type == "numeric":
                ks_2samp(prepared.raw[f.name], checked[f.name])
        exact = time.perf_counter() - t
        small = {"model": "bench", "rows": cur[:100]}
        await client.call(ml.DRIFT, small, new_context(TENANT, timeout=60))  # warm-up
        t = time.perf_counter()
        over_mesh = await client.call(
            ml.DRIFT, {"model": "bench", "rows": cur[:2_000]}, new_context(TENANT, timeout=60)
        )
        mesh_s = time.perf_counter() - t
        drifted = [r["name"] for r in report if r["drifted"]]
        print(f"\n3. drift, {args.rows} current rows vs the {args.rows}-row training reference")
        print(f"   worker code (checks + KS/PSI + chi2/JS, 20 features) {ours:8.2f} s")
        print(f"   scipy ks_2samp exact, raw columns (18 numeric)        {exact:8.2f} s")
        print(f"   ml.drift over the mesh, 2,000 rows                    {mesh_s:8.2f} s")
        print(
            f"   drifted features (mean shift 0.05 sd): {drifted or 'none'}"
            f" | over the mesh: {over_mesh.drifted}"
        )
    finally:
        await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--one-row", type=int, default=500, help="sequential 1-row calls")
    parser.add_argument("--batches", type=int, default=30, help="sequential 1,000-row calls")
    args = parser.parse_args()
    if not 1000 <= args.rows <= 200_000 or not 10 <= args.one_row <= 5000:
        raise SystemExit("--rows in [1000, 200000], --one-row in [10, 5000]")
    if not 5 <= args.batches <= 500:
        raise SystemExit("--batches in [5, 500]")
    setup_logging("warning")
    with tempfile.TemporaryDirectory(prefix="bench-ml-") as tmp:
        with embedded(Path(tmp), redis=False, durable=False) as infra:
            assert infra.nats and infra.postgres
            urls = {"NATS_URL": infra.nats.url, "DATABASE_URL": infra.postgres.url}
            worker = subprocess.Popen(
                [sys.executable, "-m", "mesh", "worker", "ml"],
                env={**os.environ, **urls, "LOG_LEVEL": "warning"},
            )
            try:
                settings = Settings(  # type: ignore[call-arg]
                    nats_url=infra.nats.url, database_url=infra.postgres.url
                )
                asyncio.run(drive(settings, args))
            finally:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()


if __name__ == "__main__":
    main()
