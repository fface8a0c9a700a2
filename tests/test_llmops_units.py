"""LLMOps pieces on their own: histogram error bound, percentile reading, rollup
compaction, KV keys and budget periods."""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from bus.context import new_id
from workers.llmops import histogram
from workers.llmops.budgets import kv_key, period_bounds
from workers.llmops.events import Row
from workers.llmops.queries import _percentiles
from workers.llmops.store import COMPACT_AT, Store, open_database


@pytest.mark.parametrize("ms", [0.1, 0.37, 1, 9.99, 57, 250, 1234.5, 60_000, 3_600_000])
def test_a_value_is_reported_within_the_stated_relative_error(ms):
    reported = histogram.value_of(histogram.bucket_of(ms))
    assert abs(reported - ms) / ms <= histogram.RELATIVE_ERROR + 1e-12


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def test_percentiles_from_split_entries_match_the_exact_ones_within_the_error():
    rnd = random.Random(3)
    values = [rnd.lognormvariate(6, 1) for _ in range(5000)]
    # Entries of several batches, the same bucket appearing many times, in any order.
    entries = [e for i in range(0, 5000, 250) for e in histogram.encode(values[i : i + 250])]
    rnd.shuffle(entries)
    got = _percentiles(entries, [0.5, 0.95, 0.99])
    for q in (0.5, 0.95, 0.99):
        exact = _nearest_rank(values, q)
        assert abs(got[q] - exact) / exact <= histogram.RELATIVE_ERROR + 1e-9, q
    assert _percentiles([], [0.5]) == {0.5: None}


def _row(tenant: str, latency: float, ts: datetime) -> Row:
    return Row(
        tenant_id=tenant,
        ts=ts,
        request_id=new_id(),
        correlation_id=None,
        model="m",
        provider="p",
        operation="generate",
        user_id="u",
        status="ok",
        error_code=None,
        tokens_in=1,
        tokens_out=1,
        cached_read=None,
        cached_write=None,
        cost=0.0,
        latency_ms=latency,
        ttft_ms=None,
    )


async def test_a_rollup_row_written_by_many_batches_stays_compact_and_exact(settings):
    assert settings.database_url
    db = await open_database(settings.database_url)
    try:
        store = Store(db)
        tenant = f"units-{new_id()[:8]}"
        ts = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
        latencies = [10.0 * (1.3**i) for i in range(40)] * 5  # 40 buckets, 200 calls
        for lat in latencies:  # one batch each: 200 upserts of one rollup row
            await store.ingest([_row(tenant, lat, ts)])
        async with db.connection() as conn:
            hist = await conn.fetchval(
                "SELECT latency_hist FROM llmops.rollup_hour WHERE tenant_id = $1", tenant
            )
            requests = await conn.fetchval(
                "SELECT requests FROM llmops.rollup_day WHERE tenant_id = $1", tenant
            )
        assert requests == 200
        assert len(hist) <= COMPACT_AT + 1
        assert sum(e & histogram.COUNT_MASK for e in hist) == 200
        got = _percentiles(hist, [0.5, 0.95])
        for q in (0.5, 0.95):
            exact = _nearest_rank(latencies, q)
            assert abs(got[q] - exact) / exact <= histogram.RELATIVE_ERROR + 1e-9
    finally:
        await db.close()


async def test_retention_drops_whole_day_partitions_and_old_rollups(settings):
    assert settings.database_url
    db = await open_database(settings.database_url)
    try:
        store = Store(db)
        tenant = f"ret-{new_id()[:8]}"
        old = datetime(2020, 1, 2, 12, tzinfo=UTC)
        await store.ingest([_row(tenant, 5.0, old)])
        dropped = await store.drop_before(datetime(2020, 1, 3, tzinfo=UTC).date())
        assert "operations_p20200102" in dropped
        async with db.connection() as conn:
            for table in ("operations", "rollup_hour", "rollup_day", "seen"):
                n = await conn.fetchval(
                    f"SELECT count(*) FROM llmops.{table} WHERE tenant_id = $1", tenant
                )
                assert n == 0, table
    finally:
        await db.close()


def test_kv_keys_hold_any_tenant_and_user_in_the_allowed_alphabet():
    key = kv_key("acme+eu@x", "user", "ann.o'neil@example.com", "day")
    assert all(c.isalnum() or c in "-_=./" for c in key)
    assert key != kv_key("acme+eu@x", "user", "ann.o'neil@example.co", "day")


def test_budget_periods_are_utc_days_and_calendar_months():
    at = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert period_bounds("day", at) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds("month", at) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds("month", at + timedelta(minutes=2))[0] == datetime(2027, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("bucket", ["hour", "day"])
async def test_rollup_answers_match_the_raw_rows(settings, bucket):
    """Sums equal, percentiles within the stated error, from the rollups and the raw rows."""
    from schemas.llmops import MetricsRequest
    from workers.llmops.queries import Reader

    assert settings.database_url
    db = await open_database(settings.database_url)
    try:
        store, reader = Store(db), Reader(db)
        tenant = f"cmp-{new_id()[:8]}"
        rnd = random.Random(11)
        now = datetime.now(UTC)
        rows = []
        for i in range(600):
            ts = now - timedelta(minutes=rnd.uniform(0, 300))
            r = _row(tenant, rnd.lognormvariate(5, 0.8), ts)
            rows.append(
                dataclasses.replace(
                    r, model=f"m{i % 3}", cost=0.001 * (i % 7), ttft_ms=rnd.uniform(10, 90)
                )
            )
        await store.ingest(rows)
        req = MetricsRequest.model_validate(
            {
                "from": (now - timedelta(hours=6)).isoformat(),
                "to": (now + timedelta(minutes=1)).isoformat(),
                "bucket": bucket,
                "group_by": ["model"],
                "metrics": ["requests", "cost", "latency_p50", "latency_p99", "ttft_p95"],
            }
        )
        roll = await reader.metrics(tenant, req, source="rollup")
        raw = await reader.metrics(tenant, req, source="raw")
        assert roll.source == "rollup" and raw.source == "raw"
        assert [(b.start, b.group) for b in roll.buckets] == [
            (b.start, b.group) for b in raw.buckets
        ]
        err = histogram.RELATIVE_ERROR
        for a, b in zip(roll.buckets, raw.buckets, strict=True):
            assert a.values["requests"] == b.values["requests"]
            assert math.isclose(a.values["cost"], b.values["cost"], abs_tol=1e-9)
            for m in ("latency_p50", "latency_p99", "ttft_p95"):
                assert abs(a.values[m] - b.values[m]) <= b.values[m] * err + 1e-6, m
        # By default: ~33 calls per rollup row are dense enough for the histograms (a
        # handful per row is answered from raw rows: test_llmops.py).
        assert (await reader.metrics(tenant, req)).source == "rollup"
    finally:
        await db.close()
