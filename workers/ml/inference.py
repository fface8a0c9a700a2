"""Inference (``ml.predict``) with its serving records, and drift reports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Any

import structlog

from bus.errors import (
    InvalidRequest,
)
from bus.sql import tenant_of
from schemas.context import Context
from schemas.ml import (
    DriftRequest,
    DriftResponse,
    FeatureDrift,
    PredictRequest,
    PredictResponse,
)
from workers.ml import drift
from workers.ml.data import DataError, check_rows, encode_rows, features_of
from workers.ml.serving import Loaded, SessionCache, infer
from workers.ml.settings import MLConfig
from workers.ml.store import ModelStore

_log = structlog.get_logger(__name__)

FLUSH_INTERVAL_S = 1.0
#: Predictions of more rows than this encode and run in a thread, off the event loop.
INLINE_ROWS = 32
#: Fewest rows a drift report compares.
MIN_DRIFT_ROWS = 20


class Inference:
    def __init__(self, models: ModelStore, config: MLConfig, sessions: SessionCache) -> None:
        self.models = models
        self.config = config
        self.sessions = sessions
        # Serving records waiting for the next flush (monitoring data: a crash loses at
        # most one flush interval of them).
        self.stats: dict[tuple[str, str, int], list[float]] = {}
        self.samples: list[tuple[str, str, int, str]] = []

    async def _loaded(self, tenant: str, req: PredictRequest | DriftRequest) -> tuple[int, Loaded]:
        row = await self.models.resolve(tenant, req.model, req.version, req.alias)
        version = row.version
        key = (tenant, req.model, version)
        loaded = self.sessions.get(key)
        if loaded is None:
            loaded = await self.sessions.load(
                key,
                row.signature,
                lambda: self.models.artifact(tenant, req.model, version),
                row.artifact_sha256,
            )
        return version, loaded

    async def predict(self, req: PredictRequest, ctx: Context) -> PredictResponse:
        tenant = tenant_of(ctx)
        version, loaded = await self._loaded(tenant, req)
        started = time.perf_counter()

        def score() -> tuple[list[Any], list[list[float]] | None]:
            return infer(loaded, encode_rows(loaded.features, req.rows))

        try:
            if len(req.rows) <= INLINE_ROWS:
                predictions, probabilities = score()
            else:
                predictions, probabilities = await asyncio.to_thread(score)
        except DataError as exc:
            raise InvalidRequest(exc.message, exc.details) from None
        self._record(tenant, req.model, version, req.rows, time.perf_counter() - started)
        # Built from the registry's classes and onnxruntime's floats: nothing to validate.
        return PredictResponse.model_construct(
            model=req.model,
            version=version,
            predictions=predictions,
            probabilities=probabilities,
        )

    def _record(
        self, tenant: str, model: str, version: int, rows: list[Any], seconds: float
    ) -> None:
        key = (tenant, model, version)
        ms = seconds * 1000
        s = self.stats.get(key)
        if s is None:
            self.stats[key] = [1, len(rows), ms, ms]
        else:
            s[0] += 1
            s[1] += len(rows)
            s[2] += ms
            s[3] = max(s[3], ms)
        k = self.config.sample_per_call
        if k and len(self.samples) < 50 * k + 10_000:  # bounded until the next flush
            chosen = rows if len(rows) <= k else random.sample(rows, k)
            self.samples.extend((tenant, model, version, json.dumps(r)) for r in chosen)

    async def flush(self) -> None:
        stats, samples = self.stats, self.samples
        self.stats, self.samples = {}, []
        if stats or samples:
            await self.models.record_serving(stats, samples, self.config.sample_keep)

    async def flush_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_INTERVAL_S)
            try:
                await self.flush()
            except Exception as exc:  # monitoring data: dropped, never retried forever
                _log.warning("serving_flush_failed", error=type(exc).__name__)

    async def drift(self, req: DriftRequest, ctx: Context) -> DriftResponse:
        tenant = tenant_of(ctx)
        row = await self.models.resolve(tenant, req.model, req.version, req.alias)
        version = row.version
        ref_text = await self.models.reference(tenant, req.model, version)
        if not ref_text:
            raise InvalidRequest(
                f"version {version} of {req.model!r} has no training reference (uploaded model)"
            )
        rows = req.rows
        if rows is None:
            await self.flush()  # include the newest predictions' inputs
            rows = await self.models.recent_samples(
                tenant, req.model, version, self.config.sample_keep
            )
        if len(rows) < MIN_DRIFT_ROWS:
            raise InvalidRequest(
                f"a drift report needs at least {MIN_DRIFT_ROWS} rows; {len(rows)} available",
                {"rows": len(rows)},
            )
        signature = row.signature
        features = features_of(signature)

        def report() -> tuple[int, list[dict[str, Any]]]:
            # The reference (1,001 quantiles a feature) is parsed here, off the loop.
            ref = json.loads(ref_text)
            n_ref = max((int(r.get("n", 0)) for r in ref.values()), default=0)
            return n_ref, drift.compare(features, ref, check_rows(features, rows))

        try:
            n_ref, results = await asyncio.to_thread(report)
        except DataError as exc:
            raise InvalidRequest(exc.message, exc.details) from None
        items = [FeatureDrift(**r) for r in results]
        return DriftResponse(
            model=req.model,
            version=version,
            rows=len(rows),
            reference_rows=n_ref,
            drifted=any(i.drifted for i in items),
            features=items,
        )
