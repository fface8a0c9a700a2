"""Writing operations: day partitions, idempotent batched inserts, rollups, retention.

One transaction per batch: claim the (tenant, request id) pairs in ``llmops.seen`` (the
ones already there are duplicates and are skipped), COPY the new rows into the day
partitions, and add them to the six rollup tables (one upsert each). Either all of it
commits or none, so a batch redelivered after a crash is counted once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg
import structlog

from bus.postgres import Database, create_database, migrate, migrations_of
from workers.llmops import histogram
from workers.llmops.events import COLUMNS, Row

_log = structlog.get_logger(__name__)

SCHEMA = "llmops"
PARTITION_PREFIX = "operations_p"
#: Histogram entries a rollup row may hold before they are merged (histogram.py).
COMPACT_AT = 64
#: Days of partitions created ahead of today.
AHEAD_DAYS = 2


_ALL_DIMS = ("model", "provider", "user_id", "operation", "status")
_NOUSER_DIMS = ("model", "provider", "operation", "status")


@dataclass(frozen=True)
class Grain:
    """One rollup table: its time unit, the dimensions it keeps, its histogram storage."""

    table: str
    unit: str  # "hour" | "day"
    dims: tuple[str, ...]
    #: Dense ``vector`` histograms (summed in SQL) or sparse ``bigint[]`` entries.
    dense: bool
    #: The row's own percentiles are kept beside its histograms (``latency_q``: the
    #: ``histogram.KEPT_QUANTILES`` of latency; ``ttft_p95``), updated by every upsert:
    #: a question grouped by exactly the grain's dimensions reads them, not histograms.
    quantiles: bool = False


#: The reference grain: every dimension, per hour (sparse: a handful of calls per row).
HOUR = Grain("rollup_hour", "hour", _ALL_DIMS, dense=False)
#: Per hour without the user: model/provider/operation/status questions read this.
HOUR_NOUSER = Grain("rollup_hour_nouser", "hour", _NOUSER_DIMS, dense=True)
#: Per hour and user only: questions by user read this.
HOUR_USER = Grain("rollup_hour_user", "hour", ("user_id",), dense=True, quantiles=True)
#: Every dimension per day: budgets' spent amounts, day questions by user and more.
DAY = Grain("rollup_day", "day", _ALL_DIMS, dense=False)
#: The dense grains per day: day-bucket questions on model/provider/operation/status, or
#: by user alone, read one row per answer row instead of merging 24 hourly ones.
DAY_NOUSER = Grain("rollup_day_nouser", "day", _NOUSER_DIMS, dense=True)
DAY_USER = Grain("rollup_day_user", "day", ("user_id",), dense=True, quantiles=True)
GRAINS = (HOUR, HOUR_NOUSER, HOUR_USER, DAY, DAY_NOUSER, DAY_USER)


def truncate(ts: datetime, unit: str) -> datetime:
    ts = ts.astimezone(UTC)
    if unit == "minute":
        return ts.replace(second=0, microsecond=0)
    if unit == "hour":
        return ts.replace(minute=0, second=0, microsecond=0)
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class _Acc:
    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cached_read: int = 0
    cached_write: int = 0
    cost: float = 0.0
    #: Histogram bucket numbers of the calls' latencies and times to first token.
    latencies: list[int] = field(default_factory=list)
    ttfts: list[int] = field(default_factory=list)

    def add(self, r: Row, lat_k: int, ttft_k: int | None) -> None:
        self.requests += 1
        self.errors += r.status == "error"
        self.tokens_in += r.tokens_in
        self.tokens_out += r.tokens_out
        self.cached_read += r.cached_read or 0
        self.cached_write += r.cached_write or 0
        self.cost += r.cost
        self.latencies.append(lat_k)
        if ttft_k is not None:
            self.ttfts.append(ttft_k)


def _rollup_sql(g: Grain) -> str:
    keys = ("tenant_id", "bucket", *g.dims)
    sums = ("requests", "errors", "tokens_in", "tokens_out", "cached_read", "cached_write")
    key_types = ["text", "timestamptz", *(["text"] * len(g.dims))]
    sum_types = ["bigint"] * len(sums)
    cols = [*keys, *sums, "cost", "latency_hist", "ttft_hist"]
    types = [*key_types, *sum_types, "float8", "text", "text"]
    args = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
    hist_type = "vector" if g.dense else "bigint[]"
    select = ", ".join(f"u.{c}::{hist_type}" if c.endswith("_hist") else f"u.{c}" for c in cols)
    hists = ("latency_hist", "ttft_hist")
    if g.dense:
        merges = [f"{c} = r.{c} + EXCLUDED.{c}" for c in hists]  # pgvector's element-wise +
    else:
        merges = [
            # Appending is a plain array copy; merging (a SQL function) costs far more, so it
            # runs only when the array grows long: readers merge the entries anyway.
            f"{c} = CASE WHEN cardinality(r.{c}) + cardinality(EXCLUDED.{c}) > {COMPACT_AT}"
            f" THEN llmops.hist_merge(r.{c}, EXCLUDED.{c}) ELSE r.{c} || EXCLUDED.{c} END"
            for c in hists
        ]
    updates = [f"{c} = r.{c} + EXCLUDED.{c}" for c in (*sums, "cost")] + merges
    names = list(cols)
    if g.quantiles:
        # Read off the merged histogram the row will hold (llmops.hist_quantiles, 0004).
        lat_q = "'{" + ",".join(map(str, histogram.KEPT_QUANTILES)) + "}'"
        names += ["latency_q", "ttft_p95"]
        select += (
            f", llmops.hist_quantiles(u.latency_hist::vector, {lat_q}),"
            " (llmops.hist_quantiles(u.ttft_hist::vector, '{0.95}'))[1]"
        )
        updates += [
            f"latency_q = llmops.hist_quantiles(r.latency_hist + EXCLUDED.latency_hist, {lat_q})",
            "ttft_p95 = (llmops.hist_quantiles(r.ttft_hist + EXCLUDED.ttft_hist, '{0.95}'))[1]",
        ]
    return (
        f"INSERT INTO llmops.{g.table} AS r ({', '.join(names)}) "
        f"SELECT {select} FROM unnest({args}) AS u({', '.join(cols)}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(updates)}"
    )


_ROLLUP_SQL = {g.table: _rollup_sql(g) for g in GRAINS}

_CLAIM_SQL = """
INSERT INTO llmops.seen (tenant_id, request_id, ts)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT DO NOTHING
RETURNING tenant_id, request_id
"""


class Store:
    """The write side: partitions, batches, retention."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Days whose partition is known to exist: a cache of catalogue facts (a replica
        # that has not seen a day yet checks with CREATE ... IF NOT EXISTS).
        self._days: set[date] = set()

    # ------------------------------------------------------------ partitions

    async def ensure_partitions(self, days: Iterable[date]) -> None:
        for day in sorted(set(days) - self._days):
            name = f"{PARTITION_PREFIX}{day:%Y%m%d}"
            start, end = day.isoformat(), (day + timedelta(days=1)).isoformat()
            sql = (
                f"CREATE TABLE IF NOT EXISTS llmops.{name} PARTITION OF llmops.operations "
                f"FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')"
            )
            async with self.db.connection() as conn:
                try:
                    await conn.execute(sql)
                except (asyncpg.DuplicateTableError, asyncpg.UniqueViolationError):
                    pass  # another replica created it at the same moment
            self._days.add(day)

    async def ensure_ahead(self, today: date | None = None) -> None:
        today = today or datetime.now(UTC).date()
        await self.ensure_partitions(today + timedelta(days=i) for i in range(AHEAD_DAYS + 1))

    # ------------------------------------------------------------ ingest

    async def ingest(self, rows: Sequence[Row]) -> int:
        """Store the rows not stored before; returns how many were new."""
        unique: dict[tuple[str, str], Row] = {}
        for r in rows:
            unique.setdefault((r.tenant_id, r.request_id), r)
        if not unique:
            return 0
        await self.ensure_partitions(r.ts.date() for r in unique.values())
        # Sorted: concurrent replicas take row locks in the same order (no deadlocks).
        keys = sorted(unique)
        async with self.db.transaction() as conn:
            claimed = await conn.fetch(
                _CLAIM_SQL,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [unique[k].ts for k in keys],
            )
            new = [unique[(c["tenant_id"], c["request_id"])] for c in claimed]
            if not new:
                return 0
            await conn.copy_records_to_table(
                "operations",
                schema_name=SCHEMA,
                columns=COLUMNS,
                records=[r.record() for r in new],
            )
            # Per row once, not per grain: the bucket starts and histogram buckets.
            hours = [truncate(r.ts, "hour") for r in new]
            starts = {"hour": hours, "day": [h.replace(hour=0) for h in hours]}
            bucket_of = histogram.bucket_of
            ks = [
                (bucket_of(r.latency_ms), None if r.ttft_ms is None else bucket_of(r.ttft_ms))
                for r in new
            ]
            for g in GRAINS:
                await self._rollup(conn, g, new, starts[g.unit], ks)
        return len(new)

    async def _rollup(
        self,
        conn: asyncpg.Connection,
        g: Grain,
        rows: Sequence[Row],
        starts: list[datetime],
        ks: list[tuple[int, int | None]],
    ) -> None:
        accs: dict[tuple[object, ...], _Acc] = defaultdict(_Acc)
        for r, start, (lat_k, ttft_k) in zip(rows, starts, ks, strict=True):
            dims = tuple(getattr(r, d) for d in g.dims)
            accs[(r.tenant_id, start, *dims)].add(r, lat_k, ttft_k)
        keys = sorted(accs, key=lambda k: (k[0], k[1], *k[2:]))  # type: ignore[arg-type]
        n_keys = 2 + len(g.dims)
        columns: list[list[object]] = [[k[i] for k in keys] for i in range(n_keys)]
        a = [accs[k] for k in keys]
        columns += [
            [x.requests for x in a],
            [x.errors for x in a],
            [x.tokens_in for x in a],
            [x.tokens_out for x in a],
            [x.cached_read for x in a],
            [x.cached_write for x in a],
            [x.cost for x in a],
        ]
        if g.dense:
            columns += [
                [histogram.dense_literal_buckets(x.latencies) for x in a],
                [histogram.dense_literal_buckets(x.ttfts) for x in a],
            ]
        else:
            columns += [
                [histogram.literal(histogram.encode_buckets(x.latencies)) for x in a],
                [histogram.literal(histogram.encode_buckets(x.ttfts)) for x in a],
            ]
        await conn.execute(_ROLLUP_SQL[g.table], *columns)

    async def record_failed(
        self, tenant: str | None, request_id: str | None, reason: str, payload: str | None
    ) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "INSERT INTO llmops.failed_events (tenant_id, request_id, reason, payload)"
                " VALUES ($1, $2, $3, $4::text::jsonb)",  # JSON text, cut to a size
                tenant,
                request_id,
                reason[:2000],
                payload,
            )

    # ------------------------------------------------------------ retention

    async def drop_before(self, cutoff: date) -> list[str]:
        """Drop the day partitions wholly before ``cutoff`` and the rollups and dedupe
        entries older than it. Returns the partitions dropped."""
        async with self.db.connection() as conn:
            names = [
                r["relname"]
                for r in await conn.fetch(
                    "SELECT c.relname FROM pg_inherits i"
                    " JOIN pg_class c ON c.oid = i.inhrelid"
                    " JOIN pg_class p ON p.oid = i.inhparent"
                    " JOIN pg_namespace n ON n.oid = p.relnamespace"
                    " WHERE n.nspname = 'llmops' AND p.relname = 'operations'"
                )
            ]
        dropped = []
        for name in sorted(names):
            try:
                day = datetime.strptime(name[len(PARTITION_PREFIX) :], "%Y%m%d").date()
            except ValueError:
                continue
            if day < cutoff:
                async with self.db.connection() as conn:
                    await conn.execute(f"DROP TABLE IF EXISTS llmops.{name}")
                self._days.discard(day)
                dropped.append(name)
        edge = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC)
        async with self.db.connection() as conn:
            await conn.execute("DELETE FROM llmops.seen WHERE ts < $1", edge)
            for g in GRAINS:
                await conn.execute(f"DELETE FROM llmops.{g.table} WHERE bucket < $1", edge)
        if dropped:
            _log.info("llmops_partitions_dropped", partitions=dropped)
        return dropped


async def open_database(dsn: str, max_size: int = 10) -> Database:
    db = await create_database(dsn, min_size=1, max_size=max_size)
    try:
        await migrate(db, SCHEMA, migrations_of("workers.llmops"))
    except BaseException:
        await db.close()
        raise
    return db
