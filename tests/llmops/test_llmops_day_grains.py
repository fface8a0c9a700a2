"""The dense day grains (``rollup_day_nouser``, ``rollup_day_user``) and the fast answer
building of ``metrics``: the day grains hold exactly the hour grains' calls summed per
day, answer day questions as the raw rows do within the stated error, keep tenants apart;
the per-user grains' kept percentiles are those of their histograms; an answer built
without validation is the validated one."""

from __future__ import annotations

import math
import random
import struct
from datetime import UTC, datetime, timedelta

import pytest

from bus.context import new_id
from schemas.llmops import MetricsRequest, MetricsResponse
from tests.llmops_support import stored_row
from workers.llmops import histogram
from workers.llmops.events import Row
from workers.llmops.queries import Reader, _make_buckets
from workers.llmops.store import (
    DAY_NOUSER,
    DAY_USER,
    HOUR_NOUSER,
    HOUR_USER,
    Grain,
    Store,
    open_database,
)


def _rows(tenant: str, n: int, seed: int, now: datetime) -> list[Row]:
    """``n`` calls over the last three days (four users, three models, some errors)."""
    rnd = random.Random(seed)
    return [
        stored_row(
            tenant,
            now - timedelta(minutes=rnd.uniform(0, 3 * 24 * 60)),
            model=f"m{i % 3}",
            operation="generate" if i % 4 else "stream",
            user_id=f"u{i % 4}",
            status="error" if i % 13 == 0 else "ok",
            tokens_in=10 + i % 50,
            tokens_out=5 + i % 20,
            cost=0.0001 * (i % 17),
            latency_ms=rnd.lognormvariate(6.0 if i % 5 else 8.0, 0.5),
            ttft_ms=rnd.uniform(20, 700) if i % 2 else None,
        )
        for i in range(n)
    ]


async def _grain_rows(conn, g: Grain, tenant: str, sql_bucket: str) -> dict:
    """(bucket, key) → sums and histograms of one grain, per day."""
    dims = ", ".join(g.dims)
    got = await conn.fetch(
        f"SELECT {sql_bucket} AS day, {dims}, sum(requests) AS requests,"
        " sum(errors) AS errors, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out,"
        " sum(cost) AS cost, vector_send(sum(latency_hist)) AS lat,"
        f" vector_send(sum(ttft_hist)) AS ttft FROM llmops.{g.table}"
        f" WHERE tenant_id = $1 GROUP BY 1, {dims}",
        tenant,
    )
    return {(r["day"], *(r[d] for d in g.dims)): r for r in got}


async def test_day_grains_hold_the_hour_grains_calls_per_day(settings):
    """Many batches (rows upserted again and again): each day grain row equals the
    hourly rows of its day and key added up — counts, sums and histograms exactly."""
    assert settings.database_url
    db = await open_database(settings.database_url)
    try:
        tenant = f"day-{new_id()[:8]}"
        rows = _rows(tenant, 2000, 3, datetime.now(UTC))
        store = Store(db)
        for i in range(0, len(rows), 150):
            await store.ingest(rows[i : i + 150])
        async with db.connection() as conn:
            for day_grain, hour_grain in ((DAY_NOUSER, HOUR_NOUSER), (DAY_USER, HOUR_USER)):
                day = await _grain_rows(conn, day_grain, tenant, "bucket")
                hour = await _grain_rows(
                    conn, hour_grain, tenant, "date_trunc('day', bucket, 'UTC')"
                )
                assert len(day) == len(hour) >= 4, day_grain.table
                assert sum(r["requests"] for r in day.values()) == 2000
                for key, a in day.items():
                    b = hour[key]
                    for col in ("requests", "errors", "tokens_in", "tokens_out", "lat", "ttft"):
                        assert a[col] == b[col], (day_grain.table, key, col)
                    assert math.isclose(a["cost"], b["cost"], abs_tol=1e-9)
            # The per-user grains keep their rows' percentiles, upsert after upsert: the
            # values histogram.dense_percentiles reads off the row's own histograms.
            for g in (HOUR_USER, DAY_USER):
                got = await conn.fetch(
                    "SELECT vector_send(latency_hist) AS lat, vector_send(ttft_hist) AS ttft,"
                    f" latency_q, ttft_p95 FROM llmops.{g.table} WHERE tenant_id = $1",
                    tenant,
                )
                # u0 and u2 never stream (no time to first token: NULL), u1 and u3 do.
                assert {r["ttft_p95"] is None for r in got} == {True, False}
                lat = histogram.sent_percentiles([r["lat"] for r in got], histogram.KEPT_QUANTILES)
                ttft = histogram.sent_percentiles([r["ttft"] for r in got], [0.95])[0.95]
                for i, r in enumerate(got):
                    assert r["latency_q"] == [lat[q][i] for q in histogram.KEPT_QUANTILES]
                    assert r["ttft_p95"] == ttft[i], g.table
    finally:
        await db.close()


@pytest.mark.parametrize("group", ["model", "user", "operation"])
async def test_day_questions_from_the_day_grains_match_the_raw_rows(settings, group):
    assert settings.database_url
    db = await open_database(settings.database_url)
    try:
        tenant, other = f"dq-{new_id()[:8]}", f"dq-{new_id()[:8]}"
        now = datetime.now(UTC)
        store, reader = Store(db), Reader(db)
        await store.ingest(_rows(tenant, 1500, 5, now))
        # Another tenant's calls in the same days and groups: never in the answer.
        await store.ingest(_rows(other, 700, 6, now))
        req = MetricsRequest.model_validate(
            {
                "from": (now - timedelta(days=4)).isoformat(),
                "to": now.isoformat(),
                "bucket": "day",
                "group_by": [group],
                "metrics": [
                    "requests",
                    "errors",
                    "tokens_in",
                    "cost",
                    "latency_p50",
                    "latency_p95",
                    "ttft_p95",
                ],
            }
        )
        roll = await reader.metrics(tenant, req, source="rollup")
        raw = await reader.metrics(tenant, req, source="raw")
        assert (roll.source, raw.source) == ("rollup", "raw")
        assert Reader._grain("day", {group}) in (DAY_NOUSER, DAY_USER)
        assert [(b["start"], b["group"]) for b in roll.buckets] == [
            (b["start"], b["group"]) for b in raw.buckets
        ]
        assert sum(b["values"]["requests"] for b in roll.buckets) == 1500
        err = histogram.RELATIVE_ERROR
        for a, b in zip(roll.buckets, raw.buckets, strict=True):
            assert list(a["values"]) == list(b["values"]) == list(req.metrics)
            for m in ("requests", "errors", "tokens_in"):
                assert a["values"][m] == b["values"][m], m
            assert math.isclose(a["values"]["cost"], b["values"]["cost"], abs_tol=1e-9)
            for m in ("latency_p50", "latency_p95", "ttft_p95"):
                if b["values"][m] is None:  # no streamed call in the group (no ttft)
                    assert a["values"][m] is None, m
                    continue
                want = b["values"][m]
                assert abs(a["values"][m] - want) <= want * err + 1e-3, (m, a, b)
        # The other tenant sees its own calls only, through the same day grains.
        theirs = await reader.metrics(other, req, source="rollup")
        assert sum(b["values"]["requests"] for b in theirs.buckets) == 700
        assert (await reader.metrics(f"none-{new_id()[:8]}", req)).buckets == []
    finally:
        await db.close()


def test_an_answer_built_without_validation_is_the_validated_one():
    start = datetime(2026, 1, 2, 3, tzinfo=UTC)
    group, values = {"user": "u1"}, {"requests": 3.0, "latency_p95": None}
    fast = MetricsResponse.model_construct(
        bucket="hour",
        source="rollup",
        percentile_relative_error=0.0488,
        buckets=_make_buckets([start], [dict(group)], [dict(values)]),
    )
    valid = MetricsResponse.model_validate(fast.model_dump())
    assert valid == fast and valid.buckets == [{"start": start, "group": group, "values": values}]
    assert fast.model_dump_json() == valid.model_dump_json()
    assert MetricsResponse.model_validate_json(fast.model_dump_json()) == fast
    with pytest.raises(ValueError):
        _make_buckets([start, start], [group], [values])


def test_percentiles_read_in_chunks_are_those_read_at_once(monkeypatch):
    rnd = random.Random(9)
    sent: list[bytes | None] = []
    for i in range(1000):
        counts = [0.0] * histogram.BUCKETS
        for _ in range(rnd.randrange(0, 40) if i % 50 else 0):  # some rows empty
            counts[histogram.bucket_of(rnd.lognormvariate(6, 1.2))] += 1
        sent.append(struct.pack(f">hh{histogram.BUCKETS}f", histogram.BUCKETS, 0, *counts))
    sent[7] = None  # a NULL histogram (a group without any time to first token)
    qs = [0.5, 0.95, 0.99]
    monkeypatch.setattr(histogram, "PERCENTILE_CHUNK", 64)  # 16 chunks, the last partial
    chunked = histogram.sent_percentiles(sent, qs)
    whole = histogram.dense_percentiles(histogram.dense_counts(sent), qs)
    assert chunked == whole
    assert whole[0.5][0] is None and whole[0.5][7] is None and whole[0.5][1] is not None


@pytest.mark.parametrize("bucket", ["hour", "day"])
@pytest.mark.parametrize("group_by", [["user"], ["model"], [], ["model", "status"]])
async def test_sums_from_the_rollups_match_the_raw_rows(settings, bucket, group_by):
    """Sums-only questions come back from the rollups as one record of arrays: the same
    buckets, groups, order and values as the raw rows give."""
    assert settings.database_url
    db = await open_database(settings.database_url)
    try:
        tenant = f"sums-{new_id()[:8]}"
        now = datetime.now(UTC)
        await Store(db).ingest(_rows(tenant, 900, 8, now))
        reader = Reader(db)
        req = MetricsRequest.model_validate(
            {
                "from": (now - timedelta(days=4)).isoformat(),
                "to": now.isoformat(),
                "bucket": bucket,
                "group_by": group_by,
                "metrics": ["tokens_out", "requests", "errors", "cost"],
            }
        )
        roll = await reader.metrics(tenant, req)
        raw = await reader.metrics(tenant, req, source="raw")
        assert (roll.source, raw.source) == ("rollup", "raw")
        assert len(roll.buckets) == len(raw.buckets) > 3
        for a, b in zip(roll.buckets, raw.buckets, strict=True):
            assert (a["start"], a["group"]) == (b["start"], b["group"])
            assert list(a["values"]) == list(req.metrics)
            for m in ("tokens_out", "requests", "errors"):
                assert a["values"][m] == b["values"][m] and isinstance(a["values"][m], float)
            assert math.isclose(a["values"]["cost"], b["values"]["cost"], abs_tol=1e-9)
        empty = req.model_copy(
            update={"from_": now - timedelta(days=40), "to": now - timedelta(days=39)}
        )
        assert (await reader.metrics(tenant, empty)).buckets == []
    finally:
        await db.close()
