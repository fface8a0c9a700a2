"""Reading operations: the paged list, metrics per time bucket, and cost analysis.

Every statement filters on the tenant first, and every question is checked for size
before it runs (number of time buckets, rows of the answer), so a bad question is an
``invalid_request`` with a reason and never a slow query. Which table answers:

* ``bucket = minute`` → raw rows, percentiles exact (``percentile_disc``);
* ``hour`` or ``day`` → the smallest rollup grain of that unit that keeps every dimension
  grouped or filtered on: ``rollup_{hour,day}_nouser`` (model, provider, operation,
  status), ``rollup_{hour,day}_user`` (the user alone), else ``rollup_hour`` /
  ``rollup_day`` (every dimension). Percentiles come from the merged log-scale
  histograms (relative error ``histogram.RELATIVE_ERROR``): one ``sum(vector)`` per group
  for the dense grains, the sparse entries added up for the others. A window holding
  few calls is answered from the raw rows instead (exact, and as cheap).

Rollup buckets are whole hours or days, so a metrics window is widened to whole buckets
(``from`` rounded down, ``to`` up); ``cost`` is exact: whole hours from the rollups plus
the partial hours at both ends from raw rows.
"""

from __future__ import annotations

import base64
import binascii
import gc
import json
import operator
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any

from bus.errors import InvalidRequest
from bus.postgres import Database
from schemas.llmops import (
    CostRequest,
    CostResponse,
    CostRow,
    Filters,
    LLMOperation,
    MetricsBucket,
    MetricsRequest,
    MetricsResponse,
    QueryRequest,
    QueryResponse,
)
from workers.llmops import histogram
from workers.llmops.store import (
    DAY,
    DAY_NOUSER,
    DAY_USER,
    HOUR,
    HOUR_NOUSER,
    HOUR_USER,
    Grain,
    truncate,
)

#: Most time buckets one metrics question may span (e.g. 24 h of minutes fits).
MAX_BUCKETS = 1_500
#: Most rows (bucket x group) one metrics answer may hold.
MAX_METRIC_ROWS = 50_000
#: Most groups one cost answer may hold.
MAX_COST_ROWS = 10_000
#: Percentiles over a window of at most this many calls come from the raw rows (exact;
#: reading so few rows by index costs about what merging their histograms does).
RAW_EXACT_MAX_CALLS = 10_000
#: Sparse grains: percentiles come from their histograms when their rows hold at least
#: this many calls on average; below it the raw rows are read (exact, and no slower).
DENSE_CALLS_PER_ROW = 16
#: ... unless the window holds more calls than this: then the rollups answer regardless.
RAW_PERCENTILE_MAX_CALLS = 2_000_000
#: ``work_mem`` of a rollup question (the default 4 MB sorts 6,000 histograms on disk).
ROLLUP_WORK_MEM = "64MB"
#: ``random_page_cost`` of a rollup question. Postgres' default (4, for spinning disks)
#: makes a scan of a whole window in key order look dearer than a sequential scan and a
#: sort; but rollup rows are written in time order (the index order is the table's) and
#: the sort of ~36,000 wide rows on a text key (no abbreviated keys in a non-C locale)
#: costs far more than the planner thinks (480 of 680 ms, by user per hour at 1M calls).
#: In key order the answer comes out sorted and GROUP BY on a key prefix streams.
ROLLUP_RANDOM_PAGE_COST = 1.1
#: ``bucket = auto`` picks the finest bucket that keeps a window within this many.
AUTO_TARGET_BUCKETS = 400

_STEP = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}
#: API dimension → column.
COLUMN = {
    "model": "model",
    "provider": "provider",
    "user": "user_id",
    "status": "status",
    "operation": "operation",
}
_PERCENTILES = {"latency_p50": 0.5, "latency_p95": 0.95, "latency_p99": 0.99}
_SUMS = ("requests", "errors", "tokens_in", "tokens_out", "cost")
#: Percentile metrics → the columns the per-user grains keep them in (``Grain.quantiles``).
_KEPT = {
    **{
        m: f"latency_q[{histogram.KEPT_QUANTILES.index(q) + 1}] AS {m}"
        for m, q in _PERCENTILES.items()
    },
    "ttft_p95": "ttft_p95",
}
#: API dimensions ``rollup_hour_nouser`` keeps.
_NOUSER = frozenset({"model", "provider", "operation", "status"})
_MASK = histogram.COUNT_MASK


def _ceil(ts: datetime, unit: str) -> datetime:
    floor = truncate(ts, unit)
    return floor if floor == ts else floor + _STEP[unit]


def _filters(f: Filters | None, args: list[Any]) -> str:
    """`` AND col = $n`` for each given filter; appends the values to ``args``."""
    if f is None:
        return ""
    sql = []
    for name, column in COLUMN.items():
        value = getattr(f, name)
        if value is not None:
            args.append(value)
            sql.append(f" AND {column} = ${len(args)}")
    return "".join(sql)


def _dims_used(group_by: Sequence[str], f: Filters | None) -> set[str]:
    used = set(group_by)
    if f is not None:
        used |= {name for name in COLUMN if getattr(f, name) is not None}
    return used


def _group(group_by: Sequence[str], record: Any) -> dict[str, str | None]:
    return {d: (record[d] or None) for d in group_by}


def _percentiles(entries: list[int] | None, qs: list[float]) -> dict[float, float | None]:
    """Merge sparse histogram entries (``k << 40 | count``) and read quantiles off them:
    the value of the first bucket whose running count reaches ``q`` of the total."""
    if not entries:
        return {q: None for q in qs}
    counts: dict[int, int] = {}
    for e in entries:
        k = e >> histogram.COUNT_BITS
        counts[k] = counts.get(k, 0) + (e & _MASK)
    total = sum(counts.values())
    out: dict[float, float | None] = {}
    pending = sorted(qs)
    run = 0
    for k in sorted(counts):
        run += counts[k]
        while pending and run >= pending[0] * total:
            out[pending.pop(0)] = histogram.value_of(k)
        if not pending:
            break
    return out


def answer_items(buckets: int, req: MetricsRequest) -> int:
    """Values and fields of a metrics answer as the bus codec counts them for its
    ``max_container`` limit: the answer's four fields, then per bucket its list entry,
    its three fields, and the entries of its ``group`` and ``values``."""
    return 4 + buckets * (4 + len(set(req.group_by)) + len(set(req.metrics)))


def answer_bytes(n: int, col: dict[str, Sequence[Any]], req: MetricsRequest) -> int:
    """An upper bound of the encoded size (msgpack or JSON) of a metrics answer of ``n``
    buckets, from its columns: per bucket the start and field names, each group value as
    long as the longest of its column, each value as a 24-character number."""
    if not n:
        return 100
    per_row = 80 + sum(len(m) + 30 for m in set(req.metrics))
    for d in set(req.group_by):
        per_row += len(d) + 8 + max(len(v or "null") for v in col[d]) * 2  # JSON escapes
    return 200 + n * per_row


def _check_carriable(
    req: MetricsRequest,
    n: int,
    col: dict[str, Sequence[Any]],
    max_items: int | None,
    max_bytes: int | None,
) -> None:
    """Refuse an answer one bus message cannot carry (``invalid_request`` with a reason),
    before building it. The worker runtime refuses any such answer after building it
    (``Codec.encode_reply``: ``payload_too_large``); this saves the building and names
    what to ask for instead."""
    items = answer_items(n, req)
    size = answer_bytes(n, col, req) if max_bytes is not None else 0
    if (max_items is not None and items > max_items) or (
        max_bytes is not None and size > max_bytes
    ):
        raise InvalidRequest(
            f"the answer has {n} buckets ({items} values and fields, up to {size} bytes),"
            " more than one message carries; use a larger bucket, a shorter window, fewer"
            " metrics or group_by fields, or filters",
            {"buckets": n, "items": items, "max_items": max_items, "max_bytes": max_bytes},
        )


def _columns(rows: Sequence[Any]) -> tuple[int, dict[str, Sequence[Any]]]:
    """The number of answer rows and the answer's columns, from fetched records: either
    one record per answer row (read column by column, by position: a name lookup per
    value costs), or — sums-only rollup questions — one record of arrays, a column each
    (:meth:`Reader._rollup_metrics_sql`), its first field ``n`` the number of rows."""
    if not rows:
        return 0, {}
    names = list(rows[0].keys())
    if names[0] == "n":
        first = rows[0]
        n = int(first[0])
        return n, {k: (first[i] or []) for i, k in enumerate(names) if i}
    return len(rows), {k: list(map(operator.itemgetter(i), rows)) for i, k in enumerate(names)}


def _buckets(
    req: MetricsRequest, n: int, col: dict[str, Sequence[Any]], *, raw: bool, dense: bool
) -> list[MetricsBucket]:
    """:func:`_build_buckets` with the cyclic garbage collector paused: 36,000 buckets
    are ~110,000 new dicts, and the collections they would trigger traverse them (and
    the fetched records) again and again (measured: ~40 % of the time of building them).
    Nothing here awaits, so no other task runs meanwhile; the objects are not cyclic."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _build_buckets(req, n, col, raw=raw, dense=dense)
    finally:
        if enabled:
            gc.enable()


def _build_buckets(
    req: MetricsRequest, n: int, col: dict[str, Sequence[Any]], *, raw: bool, dense: bool
) -> list[MetricsBucket]:
    """The answer's buckets from the fetched rows, column by column.

    Answers reach tens of thousands of rows (by user per hour over 30 days: 36,000), so
    the work per row is kept to building its three dicts: values are read
    by position from whole columns, percentiles are computed for every row at once
    (numpy, dense histograms) or read as kept by the per-user grains, and the buckets are
    plain dicts (``MetricsBucket`` is a typed dict), made without validation: every value
    comes from the database with its type."""
    if not n:
        return []
    lat_qs = [_PERCENTILES[m] for m in req.metrics if m in _PERCENTILES]
    want_ttft = "ttft_p95" in req.metrics
    # Percentiles of every row at once: {quantile: [value per row]}.
    lat: dict[float, list[float | None]] = {}
    ttft: list[float | None] = []
    if not raw and dense:  # from merged histograms, unless the rows' kept ones came
        if lat_qs and "lat" in col:
            lat = histogram.sent_percentiles(col["lat"], lat_qs)
        if want_ttft and "ttft" in col:
            ttft = histogram.sent_percentiles(col["ttft"], [0.95])[0.95]
    elif not raw:
        per_row = [_percentiles(e, lat_qs) for e in col["lat_entries"]] if lat_qs else []
        lat = {q: [p[q] for p in per_row] for q in lat_qs}
        if want_ttft:
            ttft = [_percentiles(e, [0.95])[0.95] for e in col["ttft_entries"]]
    values: list[dict[str, float | None]] = [{} for _ in range(n)]
    for m in req.metrics:  # column by column: a store per value, no zip per row
        if not raw and dense and m in col:
            # float8 sums of NOT NULL columns, or percentiles the rows keep (float8 or NULL)
            column: Sequence[float | None] = col[m]
        elif raw or m in _SUMS:
            column = [None if v is None else float(v) for v in col[m]]
        elif m == "ttft_p95":
            column = ttft
        else:
            column = lat[_PERCENTILES[m]]
        _store(values, m, column)
    groups: list[dict[str, str | None]] = [{} for _ in range(n)]
    for dim in req.group_by:
        _store(groups, dim, [g or None for g in col[dim]])
    starts = col["b"] if "b" in col else _starts(col["epoch"])
    return _make_buckets(starts, groups, values)


def _store(dicts: list[dict[str, Any]], key: str, column: Sequence[Any]) -> None:
    """``dicts[i][key] = column[i]`` for every row, looped in C (``map``)."""
    if len(dicts) != len(column):
        raise ValueError("a column of another length")
    deque(map(operator.setitem, dicts, repeat(key), column), maxlen=0)


def _starts(epochs: Sequence[int]) -> list[datetime]:
    """Bucket starts from epoch seconds: one ``datetime`` per distinct start."""
    by_epoch = {e: datetime.fromtimestamp(e, UTC) for e in set(epochs)}
    return list(map(by_epoch.__getitem__, epochs))


def _make_buckets(
    starts: Sequence[datetime],
    groups: Sequence[dict[str, str | None]],
    values: Sequence[dict[str, float | None]],
) -> list[MetricsBucket]:
    return [
        {"start": s, "group": g, "values": v}
        for s, g, v in zip(starts, groups, values, strict=True)
    ]


# ---------------------------------------------------------------- cursor


def _encode_cursor(ts: datetime, request_id: str) -> str:
    raw = json.dumps([ts.isoformat(), request_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, rid = json.loads(raw)
        when = datetime.fromisoformat(ts)
        if not isinstance(rid, str) or when.tzinfo is None:
            raise ValueError
        return when, rid
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidRequest("cursor is not a next_cursor this service returned") from None


class Reader:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------ query

    async def query(self, tenant: str, req: QueryRequest) -> QueryResponse:
        args: list[Any] = [tenant, req.from_, req.to]
        where = "tenant_id = $1 AND ts >= $2 AND ts < $3" + _filters(req.filters, args)
        if req.cursor:
            ts, rid = _decode_cursor(req.cursor)
            args += [ts, rid]
            where += f" AND (ts, request_id) < (${len(args) - 1}, ${len(args)})"
        args.append(req.limit + 1)
        sql = (
            "SELECT ts, request_id, correlation_id, model, provider, operation, user_id,"
            " status, error_code, tokens_in, tokens_out, cached_read, cached_write, cost,"
            f" latency_ms, ttft_ms FROM llmops.operations WHERE {where}"
            f" ORDER BY ts DESC, request_id DESC LIMIT ${len(args)}"
        )
        async with self.db.connection() as conn:
            rows = await conn.fetch(sql, *args)
        more = len(rows) > req.limit
        rows = rows[: req.limit]
        ops = [
            LLMOperation.model_construct(
                request_id=r["request_id"],
                ts=r["ts"],
                model=r["model"],
                provider=r["provider"] or None,
                operation=r["operation"],
                user=r["user_id"] or None,
                status=r["status"],
                error_code=r["error_code"],
                tokens_in=r["tokens_in"],
                tokens_out=r["tokens_out"],
                cached_tokens_read=r["cached_read"],
                cached_tokens_write=r["cached_write"],
                cost=r["cost"],
                latency_ms=float(r["latency_ms"]),
                ttft_ms=float(r["ttft_ms"]) if r["ttft_ms"] is not None else None,
                correlation_id=r["correlation_id"],
            )
            for r in rows
        ]
        cursor = _encode_cursor(rows[-1]["ts"], rows[-1]["request_id"]) if more else None
        return QueryResponse(operations=ops, next_cursor=cursor)

    # ------------------------------------------------------------ metrics

    @staticmethod
    def resolve_bucket(req: MetricsRequest) -> str:
        span = req.to - req.from_
        if req.bucket != "auto":
            return req.bucket
        for unit in ("minute", "hour", "day"):
            if span / _STEP[unit] <= AUTO_TARGET_BUCKETS:
                return unit
        return "day"

    async def metrics(
        self,
        tenant: str,
        req: MetricsRequest,
        *,
        source: str | None = None,
        max_items: int | None = None,
        max_bytes: int | None = None,
    ) -> MetricsResponse:
        """``source`` forces ``"raw"`` rows or the ``"rollup"`` tables (the bench's
        baseline, tests); by default the rollups answer unless :meth:`_sparse` says the raw
        rows are as cheap. ``max_items`` / ``max_bytes``: what one message may carry (the
        service passes the bus codec's limits); a larger answer is refused before it is
        built (:func:`_check_carriable`)."""
        unit = self.resolve_bucket(req)
        start, end = truncate(req.from_, unit), _ceil(req.to, unit)
        n = int((end - start) / _STEP[unit])
        if n > MAX_BUCKETS:
            raise InvalidRequest(
                f"too many {unit} buckets: {n} (at most {MAX_BUCKETS}); "
                "use a larger bucket or a shorter window",
                {"buckets": n, "max_buckets": MAX_BUCKETS},
            )
        raw = source == "raw" or unit == "minute"
        percentiles = any(m in _PERCENTILES or m == "ttft_p95" for m in req.metrics)
        grain = self._grain(unit, _dims_used(req.group_by, req.filters))
        async with self.db.connection() as conn:
            if not raw and percentiles and source is None and not grain.dense:
                raw = await self._sparse(conn, tenant, req, grain, start, end)
            if not raw:
                sql, args = self._rollup_metrics_sql(tenant, req, unit, grain, start, end)
                async with conn.transaction():
                    # Merged histograms travel through the final sort (~650 bytes a row):
                    # room to sort an answer of MAX_METRIC_ROWS in memory, not on disk.
                    await conn.execute(
                        f"SET LOCAL work_mem = '{ROLLUP_WORK_MEM}';"
                        f" SET LOCAL random_page_cost = {ROLLUP_RANDOM_PAGE_COST}"
                    )
                    rows = await conn.fetch(sql, *args)
                n, col = _columns(rows)
                if (
                    percentiles
                    and source is None
                    and grain.dense
                    and n
                    and sum(col["requests"]) <= RAW_EXACT_MAX_CALLS
                ):
                    raw = True  # few calls: the exact answer costs no more
            if raw:
                sql, args = self._raw_metrics_sql(tenant, req, unit, start, end)
                n, col = _columns(await conn.fetch(sql, *args))
        if n > MAX_METRIC_ROWS:
            raise InvalidRequest(
                f"the answer has more than {MAX_METRIC_ROWS} rows; use a larger bucket, "
                "a shorter window, fewer group_by fields or filters"
            )
        _check_carriable(req, n, col, max_items, max_bytes)
        return MetricsResponse.model_construct(
            bucket=unit,
            source="raw" if raw else "rollup",
            percentile_relative_error=0.0 if raw else round(histogram.RELATIVE_ERROR, 4),
            buckets=_buckets(req, n, col, raw=raw, dense=grain.dense),
        )

    @staticmethod
    async def _sparse(
        conn: Any, tenant: str, req: MetricsRequest, grain: Grain, start: datetime, end: datetime
    ) -> bool:
        """Whether the raw rows answer a percentile question cheaper than the rollups.

        A rollup row's histogram holds up to one entry per distinct latency bucket, so
        when rows hold few calls (light traffic: a handful per hour and model) merging
        the histograms reads about as many entries as there are calls, and the raw rows
        answer as fast and exactly. One cheap count over the rollup decides."""
        args: list[Any] = [tenant, start, end]
        where = "tenant_id = $1 AND bucket >= $2 AND bucket < $3" + _filters(req.filters, args)
        row = await conn.fetchrow(
            f"SELECT coalesce(sum(requests), 0) AS calls, count(*) AS rows"
            f" FROM llmops.{grain.table} WHERE {where}",
            *args,
        )
        calls, n = int(row["calls"]), int(row["rows"])
        return calls <= RAW_PERCENTILE_MAX_CALLS and calls < DENSE_CALLS_PER_ROW * n

    @staticmethod
    def _grain(unit: str, dims: set[str]) -> Grain:
        """The smallest grain keeping ``dims``, at the question's unit (day buckets read
        the day grains: one row per answer row where the group is the grain's key)."""
        day = unit == "day"
        if dims <= _NOUSER:
            return DAY_NOUSER if day else HOUR_NOUSER
        if dims == {"user"}:
            return DAY_USER if day else HOUR_USER
        return DAY if day else HOUR

    @staticmethod
    def _raw_metrics_sql(
        tenant: str, req: MetricsRequest, unit: str, start: datetime, end: datetime
    ) -> tuple[str, list[Any]]:
        args: list[Any] = [tenant, start, end]
        where = "tenant_id = $1 AND ts >= $2 AND ts < $3" + _filters(req.filters, args)
        dims = [f'{COLUMN[d]} AS "{d}"' for d in req.group_by]
        select = [f"date_trunc('{unit}', ts, 'UTC') AS b", *dims]
        for m in req.metrics:
            if m == "requests":
                select.append("count(*) AS requests")
            elif m == "errors":
                select.append("count(*) FILTER (WHERE status = 'error') AS errors")
            elif m in ("tokens_in", "tokens_out", "cost"):
                select.append(f"coalesce(sum({m}), 0) AS {m}")
            elif m in _PERCENTILES:
                q = _PERCENTILES[m]
                select.append(f"percentile_disc({q}) WITHIN GROUP (ORDER BY latency_ms) AS {m}")
            elif m == "ttft_p95":
                select.append("percentile_disc(0.95) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_p95")
        keys = ", ".join(str(i + 1) for i in range(1 + len(dims)))
        sql = (
            f"SELECT {', '.join(select)} FROM llmops.operations WHERE {where}"
            f" GROUP BY {keys} ORDER BY {keys} LIMIT {MAX_METRIC_ROWS + 1}"
        )
        return sql, args

    @staticmethod
    def _rollup_metrics_sql(
        tenant: str, req: MetricsRequest, unit: str, grain: Grain, start: datetime, end: datetime
    ) -> tuple[str, list[Any]]:
        """Sums per (bucket, group) and, for percentiles, the group's merged histogram.

        Dense grains: one GROUP BY with ``sum(vector)`` per histogram (pgvector, in C),
        sent in binary (``vector_send``) and read by :func:`histogram.dense_percentiles`.
        Hour grains answer day buckets with ``date_trunc``.

        Sparse grains: the entries as an array (read in Python by :func:`_percentiles`).

        Hash aggregates only, no sort or window: the histograms are unnested beside their
        row and summed per (bucket, group, histogram bucket) — at most ~60 entries per
        group whatever the number of calls — then gathered per group. Every rollup row has
        a latency entry, so the row's own sums are counted at its first entry (``i = 1``).
        """
        args: list[Any] = [tenant, start, end]
        where = "tenant_id = $1 AND bucket >= $2 AND bucket < $3" + _filters(req.filters, args)
        dims = [f'"{d}"' for d in req.group_by]
        inner_keys = ", ".join(["bucket", *(COLUMN[d] for d in req.group_by)])
        outer_keys = ", ".join(["b", *dims])
        select_dims = "".join(f', {COLUMN[d]} AS "{d}"' for d in req.group_by)
        bits, mask = histogram.COUNT_BITS, _MASK
        percentiles = any(m in _PERCENTILES or m == "ttft_p95" for m in req.metrics)
        if grain.dense or not percentiles:
            b = "bucket" if grain.unit == unit else f"date_trunc('{unit}', bucket, 'UTC')"
            # One rollup row per answer row (by user per hour): nothing to merge.
            exact = grain.unit == unit and {COLUMN[d] for d in req.group_by} == set(grain.dims)
            agg = "" if exact else "sum"
            # Only the sums asked for (and the calls, which decide raw vs rollup): tens of
            # thousands of rows are decoded value by value.
            wanted = [m for m in _SUMS if m in req.metrics or (m == "requests" and percentiles)]
            cols = [f"{agg}({m}::float8) AS {m}" for m in wanted]
            if exact and grain.quantiles:
                # The rows' own percentiles, kept by the upsert: no histogram is read.
                kept = [m for m in req.metrics if m in _KEPT]
                cols += [_KEPT[m] for m in kept]
                wanted += kept
            elif grain.dense:
                if any(m in _PERCENTILES for m in req.metrics):
                    cols.append(f"vector_send({agg}(latency_hist)) AS lat")
                if "ttft_p95" in req.metrics:
                    cols.append(f"vector_send({agg}(ttft_hist)) AS ttft")
            # Grouped and ordered by the key columns themselves, in the primary key's
            # order, so a scan in key order needs no sort; the start goes out as epoch
            # seconds (an integer decodes far cheaper than a timestamptz).
            keys = ", ".join([b, *(COLUMN[d] for d in req.group_by)])
            group = "" if exact else f" GROUP BY {keys}"
            histograms = len(cols) > len(wanted)
            # Sums only: the rows are folded into one record of arrays, a column each
            # (arrays of numbers decode in C, far cheaper than a record per row), in the
            # rows' order: ``ORDER BY`` the inner query's own keys inside the aggregates,
            # so its sorted output is not sorted again. With histograms, a record per row
            # (an array of 36,000 of them costs the server more than it saves).
            key = "" if histograms else f"{b} AS bucket_key, "
            sql = (
                f"SELECT {key}extract(epoch FROM {b})::int8 AS epoch{select_dims},"
                f" {', '.join(cols)} FROM llmops.{grain.table}"
                f" WHERE {where}{group} ORDER BY {keys} LIMIT {MAX_METRIC_ROWS + 1}"
            )
            if histograms:
                return sql, args
            out = ["epoch", *(f'"{d}"' for d in req.group_by), *wanted]
            order = ", ".join(["bucket_key", *(f'"{d}"' for d in req.group_by)])
            arrays = ", ".join(f"array_agg({c} ORDER BY {order}) AS {c}" for c in out)
            return f"SELECT count(*) AS n, {arrays} FROM ({sql}) s", args

        def merged(column: str, with_sums: bool) -> str:
            sums = "".join(f", sum({m}) FILTER (WHERE u.i = 1) AS {m}" for m in _SUMS if with_sums)
            return (
                f"SELECT bucket AS b{select_dims}, u.e >> {bits} AS k,"
                f" sum(u.e & {mask})::bigint AS c{sums}"
                f" FROM llmops.{grain.table} r, unnest(r.{column}) WITH ORDINALITY AS u(e, i)"
                f" WHERE {where} GROUP BY {inner_keys}, k"
            )

        outer_sums = ", ".join(f"sum(x.{m}) AS {m}" for m in _SUMS)
        sql = (
            f"SELECT x.b{''.join(f', x.{d}' for d in dims)}, {outer_sums},"
            f" array_agg((x.k << {bits}) | x.c) AS lat_entries"
            f" FROM ({merged('latency_hist', True)}) x GROUP BY {outer_keys}"
        )
        if "ttft_p95" in req.metrics:
            on = " AND ".join(f"t.{k} = s.{k}" for k in ["b", *dims])
            sql = (
                f"SELECT s.*, t.ttft_entries FROM ({sql}) s LEFT JOIN ("
                f"SELECT {outer_keys}, array_agg((k << {bits}) | c) AS ttft_entries"
                f" FROM ({merged('ttft_hist', False)}) y GROUP BY {outer_keys}) t ON {on}"
            )
            order = ", ".join(f"s.{k}" for k in ["b", *dims])
        else:
            order = ", ".join(f"x.{k}" for k in ["b", *dims])
        return f"{sql} ORDER BY {order} LIMIT {MAX_METRIC_ROWS + 1}", args

    # ------------------------------------------------------------ cost

    async def cost(self, tenant: str, req: CostRequest) -> CostResponse:
        dims = list(req.group_by)
        grain = HOUR if "user" in _dims_used(dims, req.filters) else HOUR_NOUSER
        inner_start, inner_end = _ceil(req.from_, "hour"), truncate(req.to, "hour")
        args: list[Any] = [tenant]
        roll_filters = _filters(req.filters, args)
        raw_filters = roll_filters  # same columns, same placeholders
        cols = ", ".join(f'{COLUMN[d]} AS "{d}"' for d in dims)
        sel = f"{cols}, " if cols else ""
        quoted = ", ".join(f'"{d}"' for d in dims)
        outer = f"{quoted}, " if quoted else ""
        sums = "requests, tokens_in, tokens_out, cached_read, cached_write, cost"
        raw_sums = (
            "1 AS requests, tokens_in, tokens_out, coalesce(cached_read, 0) AS cached_read,"
            " coalesce(cached_write, 0) AS cached_write, cost"
        )
        parts = []
        ranges: list[tuple[datetime, datetime]] = []
        if inner_start < inner_end:
            args += [inner_start, inner_end]
            parts.append(
                f"SELECT {sel}{sums} FROM llmops.{grain.table} WHERE tenant_id = $1"
                f" AND bucket >= ${len(args) - 1} AND bucket < ${len(args)}{roll_filters}"
            )
            ranges = [(req.from_, inner_start), (inner_end, req.to)]
        else:
            ranges = [(req.from_, req.to)]
        for lo, hi in ranges:
            if lo >= hi:
                continue
            args += [lo, hi]
            parts.append(
                f"SELECT {sel}{raw_sums} FROM llmops.operations WHERE tenant_id = $1"
                f" AND ts >= ${len(args) - 1} AND ts < ${len(args)}{raw_filters}"
            )
        group = quoted
        sql = (
            f"SELECT {outer}sum(requests)::bigint AS requests, sum(tokens_in)::bigint AS tokens_in,"
            " sum(tokens_out)::bigint AS tokens_out, sum(cached_read)::bigint AS cached_read,"
            " sum(cached_write)::bigint AS cached_write, sum(cost) AS cost FROM ("
            + " UNION ALL ".join(parts)
            + ") x"
            + (f" GROUP BY {group}" if group else "")
            + f" ORDER BY cost DESC NULLS LAST LIMIT {MAX_COST_ROWS + 1}"
        )
        async with self.db.connection() as conn:
            rows = await conn.fetch(sql, *args)
        if len(rows) > MAX_COST_ROWS:
            raise InvalidRequest(
                f"the answer has more than {MAX_COST_ROWS} groups; filter or group by less"
            )
        out = [
            CostRow(
                group=_group(dims, r),
                cost=float(r["cost"] or 0.0),
                tokens_in=r["tokens_in"] or 0,
                tokens_out=r["tokens_out"] or 0,
                cached_tokens_read=r["cached_read"] or 0,
                cached_tokens_write=r["cached_write"] or 0,
                requests=r["requests"] or 0,
            )
            for r in rows
            if r["requests"]
        ]
        return CostResponse(total_cost=sum(r.cost for r in out), rows=out)


def now() -> datetime:
    return datetime.now(UTC)
