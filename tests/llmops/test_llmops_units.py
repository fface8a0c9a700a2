"""LLMOps pieces on their own: histogram error bound, percentile reading, rollup
compaction, KV keys and budget periods."""

from __future__ import annotations

import dataclasses
import math
import random
import struct
from datetime import UTC, datetime, timedelta

import pytest

from bus.context import new_id
from tests.llmops_support import stored_row
from workers.llmops import histogram
from workers.llmops.budgets import kv_key, period_bounds
from workers.llmops.events import Row
from workers.llmops.queries import _percentiles
from workers.llmops.store import COMPACT_AT, Store, open_database


@pytest.mark.parametrize("ms", [1, 1.37, 9.99, 57, 250, 1234.5, 60_000, 3_400_000])
def test_a_value_is_reported_within_the_stated_relative_error(ms):
    reported = histogram.value_of(histogram.bucket_of(ms))
    assert abs(reported - ms) / ms <= histogram.RELATIVE_ERROR + 1e-12


def test_the_bucket_range_is_the_stated_one():
    assert histogram.bucket_of(0.99) == 0 and histogram.value_of(0) == 0.0
    assert histogram.bucket_of(1.0) == 1
    assert 55 * 60_000 < histogram.TOP_MS < 60 * 60_000  # about 58 minutes
    assert histogram.bucket_of(histogram.TOP_MS * 1.01) == histogram.MAX_BUCKET
    assert histogram.bucket_of(86_400_000) == histogram.MAX_BUCKET == histogram.BUCKETS - 1


async def test_the_sql_histogram_helpers_match_the_python_ones(settings):
    """The migration rebuilds rollups from raw rows with these: same buckets, same sums."""
    assert settings.database_url
    values = [0.2, 0.999, 1.0, 1.05, 7.3, 57.0, 250.5, 1234.5, 60_000.0, 3_400_000.0, 9e7]
    db = await open_database(settings.database_url)
    try:
        async with db.connection() as conn:
            got = await conn.fetch(
                "SELECT llmops.hist_bucket(v) AS k FROM unnest($1::real[]) AS v", values
            )
            assert [r["k"] for r in got] == [histogram.bucket_of(v) for v in values]
            ks = [histogram.bucket_of(v) for v in values + values[:3]]
            sparse = await conn.fetchval("SELECT llmops.hist_sparse($1::int[])", ks)
            assert sparse == histogram.encode(values + values[:3])
            dense = await conn.fetchval("SELECT vector_send(llmops.hist_dense($1::int[]))", ks)
            counts = histogram.dense_counts([dense])[0]
            assert list(counts) == [ks.count(k) for k in range(histogram.BUCKETS)]
    finally:
        await db.close()


def _vector_send(counts: list[int]) -> bytes:
    """pgvector's binary form, as ``vector_send`` returns it."""
    return struct.pack(f">hh{len(counts)}f", len(counts), 0, *counts)


def test_dense_histograms_summed_give_the_exact_percentiles_within_the_error():
    rnd = random.Random(5)
    groups = {
        "lognormal": [rnd.lognormvariate(6.5, 0.6) for _ in range(4000)],
        "bimodal": [rnd.gauss(40, 5) for _ in range(900)]
        + [rnd.gauss(2500, 300) for _ in range(100)],
        "one": [123.0],
    }
    sent = []
    for values in groups.values():
        # Histograms of many rollup rows (batches of 37 calls), summed as sum(vector) does.
        total = [0] * histogram.BUCKETS
        for i in range(0, len(values), 37):
            counts = [0] * histogram.BUCKETS
            for v in values[i : i + 37]:
                counts[histogram.bucket_of(v)] += 1
            total = [a + b for a, b in zip(total, counts, strict=True)]
        sent.append(_vector_send(total))
    sent.append(None)  # a group without calls (no time to first token, say)
    qs = [0.5, 0.95, 0.99]
    got = histogram.dense_percentiles(histogram.dense_counts(sent), qs)
    for i, values in enumerate(groups.values()):
        for q in qs:
            exact = _nearest_rank(values, q)
            assert abs(got[q][i] - exact) / exact <= histogram.RELATIVE_ERROR + 1e-9, (i, q)
    assert all(got[q][3] is None for q in qs)


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
    return stored_row(tenant, ts, latency_ms=latency)


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
        assert [(b["start"], b["group"]) for b in roll.buckets] == [
            (b["start"], b["group"]) for b in raw.buckets
        ]
        err = histogram.RELATIVE_ERROR
        for a, b in zip(roll.buckets, raw.buckets, strict=True):
            assert a["values"]["requests"] == b["values"]["requests"]
            assert math.isclose(a["values"]["cost"], b["values"]["cost"], abs_tol=1e-9)
            for m in ("latency_p50", "latency_p99", "ttft_p95"):
                assert abs(a["values"][m] - b["values"][m]) <= b["values"][m] * err + 1e-6, m
        # By default a window of so few calls is answered exactly from the raw rows.
        assert (await reader.metrics(tenant, req)).source == "raw"
    finally:
        await db.close()


@pytest.mark.parametrize("bucket", ["hour", "day"])
@pytest.mark.parametrize("group", ["model", "user", "status"])
async def test_percentiles_from_dense_rollups_agree_with_the_exact_raw_ones(
    settings, monkeypatch, bucket, group
):
    """A known distribution over 30 hours, ingested in many batches: percentiles merged
    from the dense rollup grains (by model or status: rollup_hour_nouser; by user:
    rollup_hour_user) are the exact raw percentiles within the stated relative error."""
    from schemas.llmops import MetricsRequest
    from workers.llmops import queries
    from workers.llmops.queries import Reader

    assert settings.database_url
    db = await open_database(settings.database_url)
    try:
        store, reader = Store(db), Reader(db)
        tenant = f"dense-{new_id()[:8]}"
        rnd = random.Random(17)
        now = datetime.now(UTC)
        rows = []
        for i in range(3000):
            ts = now - timedelta(minutes=rnd.uniform(0, 30 * 60))
            slow = i % 5 == 0  # a second mode: one call in five is ten times slower
            r = _row(tenant, rnd.lognormvariate(7.5 if slow else 5.2, 0.4), ts)
            rows.append(
                dataclasses.replace(
                    r,
                    model=f"m{i % 3}",
                    user_id=f"u{i % 4}",
                    status="error" if i % 11 == 0 else "ok",
                    cost=0.001 * (i % 7),
                    ttft_ms=rnd.uniform(10, 900) if i % 2 else None,
                )
            )
        for i in range(0, len(rows), 250):  # twelve batches: rollup rows upserted often
            await store.ingest(rows[i : i + 250])
        req = MetricsRequest.model_validate(
            {
                "from": (now - timedelta(hours=31)).isoformat(),
                "to": (now + timedelta(minutes=1)).isoformat(),
                "bucket": bucket,
                "group_by": [group],
                "metrics": [
                    "requests",
                    "errors",
                    "cost",
                    "latency_p50",
                    "latency_p95",
                    "latency_p99",
                    "ttft_p95",
                ],
            }
        )
        monkeypatch.setattr(queries, "RAW_EXACT_MAX_CALLS", 100)
        roll = await reader.metrics(tenant, req)  # what the service picks: the rollups
        raw = await reader.metrics(tenant, req, source="raw")
        assert (roll.source, raw.source) == ("rollup", "raw")
        assert roll.percentile_relative_error == round(histogram.RELATIVE_ERROR, 4)
        assert [(b["start"], b["group"]) for b in roll.buckets] == [
            (b["start"], b["group"]) for b in raw.buckets
        ]
        assert sum(b["values"]["requests"] or 0 for b in roll.buckets) == 3000
        err = histogram.RELATIVE_ERROR
        checked = 0
        for a, b in zip(roll.buckets, raw.buckets, strict=True):
            assert a["values"]["requests"] == b["values"]["requests"]
            assert a["values"]["errors"] == b["values"]["errors"]
            assert math.isclose(a["values"]["cost"], b["values"]["cost"], abs_tol=1e-9)
            for m in ("latency_p50", "latency_p95", "latency_p99", "ttft_p95"):
                if b["values"][m] is None:
                    assert a["values"][m] is None, m
                    continue
                want = b["values"][m]
                assert abs(a["values"][m] - want) <= want * err + 1e-3, (m, a, b)
                checked += 1
        assert checked >= 3 * len(raw.buckets)  # the latencies at least; ttft where any
    finally:
        await db.close()


async def test_the_dense_histogram_migration_rebuilds_rollups_from_the_raw_rows(settings, tmp_path):
    """A database with 0001's rollups (and rows in them) migrated by 0002: every rollup
    grain is rebuilt from the raw rows and equals what the store writes for them."""
    import shutil

    import asyncpg

    from bus.postgres import create_database, migrate, migrations_of
    from workers.llmops.store import GRAINS

    assert settings.database_url
    name = f"llmops_mig_{new_id()[:8].lower()}"
    admin = await asyncpg.connect(settings.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = settings.database_url.rsplit("/", 1)[0] + f"/{name}"
    source = migrations_of("workers.llmops")
    try:
        db = await create_database(dsn)
        try:
            shutil.copy(str(source / "0001_llmops.sql"), tmp_path)
            assert await migrate(db, "llmops", tmp_path) == ["0001_llmops.sql"]
            now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            rnd = random.Random(23)
            rows = [
                dataclasses.replace(
                    _row("old", rnd.randrange(4, 40_000) / 4, now - timedelta(minutes=7 * i)),
                    model=f"m{i % 2}",
                    user_id=f"u{i % 3}",
                    status="error" if i % 5 == 0 else "ok",
                    tokens_in=i,
                    cost=i / 1000,
                    ttft_ms=rnd.randrange(4, 4000) / 4 if i % 2 else None,
                )
                for i in range(400)  # 400 calls over ~47 hours
            ]
            async with db.connection() as conn:
                for day in {r.ts.date() for r in rows}:
                    await conn.execute(
                        f"CREATE TABLE llmops.operations_p{day:%Y%m%d} PARTITION OF"
                        f" llmops.operations FOR VALUES FROM ('{day} 00:00+00')"
                        f" TO ('{day + timedelta(days=1)} 00:00+00')"
                    )
                await conn.copy_records_to_table(
                    "operations", schema_name="llmops", records=[r.record() for r in rows]
                )
                # A rollup row in the old shape: gone after the rebuild.
                await conn.execute(
                    "INSERT INTO llmops.rollup_hour_nouser VALUES ('old', $1, 'x', 'p',"
                    " 'generate', 'ok', 1, 0, 1, 1, 0, 0, 0, '{1099511627777}', '{}')",
                    now,
                )
            shutil.copy(str(source / "0002_dense_histograms.sql"), tmp_path)
            assert await migrate(db, "llmops", tmp_path) == ["0002_dense_histograms.sql"]
            # The later migrations (0003: day grains rebuilt from the hour grains) before
            # the store, which writes every grain, runs: all grains are compared below.
            for later in sorted(source.glob("*.sql")):
                if later.name > "0002_dense_histograms.sql":
                    shutil.copy(str(later), tmp_path)
            await migrate(db, "llmops", tmp_path)
            # The same calls through the store, as another tenant.
            await Store(db).ingest([dataclasses.replace(r, tenant_id="new") for r in rows])
            async with db.connection() as conn:
                for g in GRAINS:
                    keys = ", ".join(("bucket", *g.dims))
                    hist = "vector_send({})" if g.dense else "{}"
                    # The kept percentiles: 0004's backfill = what the upserts keep.
                    kept = "latency_q, ttft_p95, " if g.quantiles else ""
                    sql = (
                        f"SELECT {keys}, {kept}requests, errors, tokens_in, cost,"
                        f" {hist.format('latency_hist')} AS lat,"
                        f" {hist.format('ttft_hist')} AS ttft"
                        f" FROM llmops.{g.table} WHERE tenant_id = $1 ORDER BY {keys}"
                    )
                    rebuilt, stored = await conn.fetch(sql, "old"), await conn.fetch(sql, "new")
                    assert len(rebuilt) == len(stored) > 1, g.table
                    for a, b in zip(rebuilt, stored, strict=True):
                        cols = (*g.dims, "bucket", "requests", "errors", "tokens_in")
                        for col in cols + (("latency_q", "ttft_p95") if g.quantiles else ()):
                            assert a[col] == b[col], (g.table, col)
                        assert math.isclose(a["cost"], b["cost"], abs_tol=1e-9)
                        for col in ("lat", "ttft"):
                            if g.dense:
                                assert a[col] == b[col], (g.table, col)
                            else:
                                assert _merged(a[col]) == _merged(b[col]), (g.table, col)
        finally:
            await db.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def _merged(entries: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for e in entries:
        k = e >> histogram.COUNT_BITS
        out[k] = out.get(k, 0) + (e & histogram.COUNT_MASK)
    return out
