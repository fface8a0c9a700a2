"""Retrieval legs on Postgres and their fusion.

* **Vector leg** (cosine). pgvector 0.6.2's HNSW returns at most ``hnsw.ef_search`` rows
  and filters *after* the index scan, so a tenant owning a small share of the table gets
  almost nothing back. Per query we count the candidate rows (bounded, on the
  ``(tenant_id, collection_id)`` index): below :data:`EXACT_SCAN_LIMIT` the leg is an exact
  scan ordered by distance (no index can be chosen: the ORDER BY expression is not the
  index's); above it, HNSW with ``SET LOCAL hnsw.ef_search`` raised over the leg size, and
  an exact scan if HNSW still comes back short (a selective filter).
* **Keyword leg** (Okapi BM25 on ``tsvector``, cost bounded whatever the collection size).
  The question's lexemes (same ``english`` config as the index) are looked up in the GIN
  index: each lexeme's document frequency is counted exactly up to :data:`DF_CAP` chunks
  (a bounded count) and, above it, estimated from Postgres's own ``ANALYZE`` statistics of
  the column (its most common lexemes and their shares), scaled to the collections' size.
  Rarest first, lexemes *select* candidate rows while the selected rows fit
  :data:`CANDIDATE_BUDGET`; rows holding two of the remaining (common) lexemes are added
  up to the budget. Only those rows are scored, with exact BM25 over every lexeme: IDF
  from the frequencies above, term frequency from ``ts_rank_cd`` of a one-lexeme query
  (0.1 per occurrence), length from the chunk's lexeme count against the collections'
  average (``rag.documents.lex_total``). The collections' size, average length and the
  frequencies are cached per process under the collections' versions (bumped by every
  write), so they are recomputed after a write, never served stale.
* **Fusion**: weighted reciprocal rank fusion, ``sum(w_leg / (rrf_k + rank))``.
"""

from __future__ import annotations

import functools
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from bus.postgres import Database
from bus.sql import vector_literal
from workers.rag import timings
from workers.rag.store import TS_CONFIG
from workers.rag.timings import stage

#: Below this many candidate chunks the vector leg scans exactly (milliseconds at 384-d).
EXACT_SCAN_LIMIT = 20_000
#: pgvector's upper bound for hnsw.ef_search.
MAX_EF_SEARCH = 1000
MIN_EF_SEARCH = 100
#: Okapi BM25 parameters (Anserini's BEIR defaults).
BM25_K1 = 0.9
BM25_B = 0.4
#: Lexemes in more than this share of chunks still score, but do not select candidates.
COMMON_TERM_SHARE = 0.25
#: Document frequencies are counted exactly up to this many chunks per lexeme.
DF_CAP = 1000
#: At most this many rows per candidate set are scored with BM25 per query.
CANDIDATE_BUDGET = 2000
#: Lexemes scored per question at most (the rarest): a long question costs no more.
MAX_TERMS = 24
#: How long the table's most-common-lexeme statistics (pg_stats) are reused.
COMMON_STATS_TTL_S = 300.0


@dataclass(frozen=True)
class Scope:
    tenant: str
    collection_ids: list[str]
    dimensions: int
    filters: dict[str, Any] | None
    versions: tuple[int, ...] = ()
    """The collections' versions (bumped by every write): the key of cached statistics."""

    @property
    def cache_key(self) -> tuple[Any, ...] | None:
        if not self.versions:
            return None
        return (self.tenant, tuple(self.collection_ids), self.versions)

    @property
    def jsonb_filter(self) -> dict[str, Any] | None:
        """The ``$n::jsonb`` containment filter (the pool's codec encodes it), or None."""
        return self.filters or None


class _Lru:
    """A small process-local LRU of values derived from Postgres, keyed by the searched
    collections' versions (bumped by every write), so an entry is never served for data
    that changed after it was computed — it is only ever recomputed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key: Hashable, value: Any) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


_STATS = _Lru(1024)
_DF = _Lru(50_000)
_COMMON: dict[str, Any] = {"at": -1e9, "freq": {}, "rows": 0.0}


@asynccontextmanager
async def _connection(db: Database, name: str) -> AsyncIterator[asyncpg.Connection]:
    """A pool connection, its wait timed as the stage ``<name>.acquire``."""
    t0 = time.perf_counter()
    async with db.connection() as conn:
        timings.add(f"{name}.acquire", time.perf_counter() - t0)
        yield conn


def _quote_lexeme(lexeme: str) -> str:
    """A lexeme as a tsquery operand, taken literally (no parsing, no stemming)."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


async def candidate_count(conn: asyncpg.Connection, scope: Scope, cap: int) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM rag.chunks c"
            " WHERE c.tenant_id = $1 AND c.collection_id = ANY($2::text[])"
            " AND ($3::jsonb IS NULL OR c.metadata @> $3::jsonb) LIMIT $4) s",
            scope.tenant,
            scope.collection_ids,
            scope.jsonb_filter,
            cap,
        )
    )


async def _exact(
    conn: asyncpg.Connection, scope: Scope, vector: str, limit: int
) -> list[tuple[str, float]]:
    rows = await conn.fetch(
        "SELECT c.chunk_id, c.embedding <=> $3::vector AS distance FROM rag.chunks c"
        " WHERE c.tenant_id = $1 AND c.collection_id = ANY($2::text[])"
        " AND ($4::jsonb IS NULL OR c.metadata @> $4::jsonb)"
        " ORDER BY distance, c.chunk_id LIMIT $5",
        scope.tenant,
        scope.collection_ids,
        vector,
        scope.jsonb_filter,
        limit,
    )
    return [(r["chunk_id"], 1.0 - float(r["distance"])) for r in rows]


async def _hnsw(
    conn: asyncpg.Connection, scope: Scope, vector: str, limit: int
) -> list[tuple[str, float]]:
    n = int(scope.dimensions)
    ef = min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, 2 * limit))
    async with conn.transaction():
        await conn.execute(f"SET LOCAL hnsw.ef_search = {ef}")
        rows = await conn.fetch(
            f"SELECT c.chunk_id, (c.embedding::vector({n})) <=> $3::vector({n}) AS distance"
            f" FROM rag.chunks c WHERE c.dims = {n}"
            " AND c.tenant_id = $1 AND c.collection_id = ANY($2::text[])"
            " AND ($4::jsonb IS NULL OR c.metadata @> $4::jsonb)"
            f" ORDER BY (c.embedding::vector({n})) <=> $3::vector({n}) LIMIT $5",
            scope.tenant,
            scope.collection_ids,
            vector,
            scope.jsonb_filter,
            limit,
        )
    return [(r["chunk_id"], 1.0 - float(r["distance"])) for r in rows]


async def vector_leg(
    db: Database, scope: Scope, embedding: list[float], limit: int
) -> tuple[list[tuple[str, float]], str]:
    """Chunk ids by cosine similarity, best first, and the plan used (exact | hnsw)."""
    vector = vector_literal(embedding)
    async with _connection(db, "vector") as conn:
        key = (
            ("count", scope.cache_key, repr(scope.filters), EXACT_SCAN_LIMIT)
            if scope.cache_key
            else None
        )
        candidates = _STATS.get(key) if key else None
        if candidates is None:
            with stage("vector.count"):
                candidates = await candidate_count(conn, scope, EXACT_SCAN_LIMIT)
            if key:
                _STATS.put(key, candidates)
        with stage("vector.scan"):
            if candidates < EXACT_SCAN_LIMIT:
                return await _exact(conn, scope, vector, limit), "exact"
            rows = await _hnsw(conn, scope, vector, limit)
            if len(rows) < limit:  # post-filtering ate the index's rows: fall back to exact
                return await _exact(conn, scope, vector, limit), "exact"
        return rows, "hnsw"


async def query_lexemes(conn: asyncpg.Connection, query: str) -> list[str]:
    lexemes = await conn.fetchval(
        f"SELECT tsvector_to_array(to_tsvector('{TS_CONFIG}', $1))", query
    )
    return list(lexemes or [])


async def collection_stats(conn: asyncpg.Connection, scope: Scope) -> tuple[float, float]:
    """(chunks, average chunk length in lexemes) of the searched collections."""
    key = scope.cache_key
    cached = _STATS.get(key) if key else None
    if cached is not None:
        return cast(tuple[float, float], cached)
    stats = await conn.fetchrow(
        "SELECT coalesce(sum(chunk_count), 0)::float8 AS n,"
        " coalesce(sum(lex_total), 0)::float8 AS lex FROM rag.documents"
        " WHERE tenant_id = $1 AND collection_id = ANY($2::text[])",
        scope.tenant,
        scope.collection_ids,
    )
    n = float(stats["n"])
    out = (n, max(1.0, float(stats["lex"]) / n) if n > 0 else 1.0)
    if key:
        _STATS.put(key, out)
    return out


async def _common_lexemes(conn: asyncpg.Connection) -> tuple[dict[str, float], float]:
    """The table's most common lexemes and the share of chunks holding each (Postgres's
    own ``ANALYZE`` statistics of ``rag.chunks.tsv``), and the table's row count as
    ``ANALYZE``/``VACUUM`` last saw it; re-read every few minutes."""
    now = time.monotonic()
    if now - _COMMON["at"] < COMMON_STATS_TTL_S:
        return cast(dict[str, float], _COMMON["freq"]), float(_COMMON["rows"])
    row = await conn.fetchrow(
        "SELECT s.most_common_elems::text::text[] AS elems, s.most_common_elem_freqs AS freqs,"
        " (SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = 'rag.chunks'::regclass)"
        " AS rows FROM (SELECT 1) one LEFT JOIN pg_stats s ON s.schemaname = 'rag'"
        " AND s.tablename = 'chunks' AND s.attname = 'tsv'"
    )
    freq: dict[str, float] = {}
    if row["elems"] and row["freqs"]:
        freq = dict(zip(row["elems"], row["freqs"], strict=False))
    rows = float(row["rows"] or 0.0)
    _COMMON.update(at=now, freq=freq, rows=rows)
    return freq, rows


def over_the_cap(freq: float | None, table_rows: float, n: float) -> bool:
    """Whether a lexeme is certainly in more than ``DF_CAP`` chunks of the searched
    collections (``n`` chunks), so that counting it would only confirm the cap.

    The table holds about ``freq * table_rows`` chunks with it (its share in the
    ``ANALYZE`` statistics); at most ``table_rows - n`` of those lie outside the searched
    collections. If the rest is still twice the cap (a margin for the sampled share),
    the bounded count would stop at the cap — after building the lexeme's whole bitmap
    on the GIN index, 30–60 ms for a word in a sixth of a million chunks — and the
    frequency would be estimated anyway."""
    if freq is None or n <= 0:
        return False
    return freq * table_rows - max(0.0, table_rows - n) >= 2 * DF_CAP


async def document_frequencies(
    conn: asyncpg.Connection, scope: Scope, lexemes: list[str], n: float
) -> list[float]:
    """Chunks of the searched collections holding each lexeme: exact up to ``DF_CAP``
    (a bounded count on the GIN index), above it estimated from the table's statistics
    (never below the cap). The common words of a big collection cost ``DF_CAP`` row
    visits each, never a count of every row that holds them — and none at all when the
    statistics show they are over the cap (:func:`over_the_cap`)."""
    key = scope.cache_key
    out: dict[str, float] = {}
    missing = []
    for lx in lexemes:
        cached = _DF.get((key, lx)) if key else None
        if cached is None:
            missing.append(lx)
        else:
            out[lx] = float(cached)
    timings.add("keyword.df_missing.n", len(missing))
    if missing:
        with stage("keyword.common"):
            common, table_rows = await _common_lexemes(conn)

        def estimate(lx: str) -> float:
            return max(float(DF_CAP), min(n, n * float(common.get(lx, 0.0))))

        over = [lx for lx in missing if over_the_cap(common.get(lx), table_rows, n)]
        counted = {lx: estimate(lx) for lx in over}
        to_count = [lx for lx in missing if lx not in counted]
        timings.add("keyword.df_counted.n", len(to_count))
        if to_count:
            rows = await conn.fetch(
                "SELECT t.i, (SELECT count(*) FROM (SELECT 1 FROM rag.chunks c"
                "   WHERE c.tenant_id = $1 AND c.collection_id = ANY($2::text[])"
                "   AND c.tsv @@ t.q::tsquery LIMIT $4) s) AS df"
                " FROM unnest($3::text[]) WITH ORDINALITY AS t(q, i)",
                scope.tenant,
                scope.collection_ids,
                [_quote_lexeme(lx) for lx in to_count],
                DF_CAP,
            )
            for r in rows:
                lx, df = to_count[int(r["i"]) - 1], float(r["df"])
                counted[lx] = estimate(lx) if df >= DF_CAP else df
        for lx, v in counted.items():
            out[lx] = v
            if key:
                _DF.put((key, lx), v)
    return [out[lx] for lx in lexemes]


def plan_candidates(lexemes: list[str], df: list[float], n: float) -> tuple[list[int], list[int]]:
    """Which lexemes select candidate rows, and which are too common to.

    Rarest first, a lexeme selects every row holding it while the selected rows stay
    within ``CANDIDATE_BUDGET`` and it is in at most ``COMMON_TERM_SHARE`` of the chunks;
    the remaining (common) lexemes still score, and rows holding two of them are added
    up to the budget. With nothing selective, the rarest lexeme selects (up to the budget).
    """
    present = sorted((i for i in range(len(lexemes)) if df[i] > 0), key=lambda i: df[i])
    selective: list[int] = []
    total = 0.0
    for i in present:
        if df[i] <= COMMON_TERM_SHARE * n and df[i] < DF_CAP and total + df[i] <= CANDIDATE_BUDGET:
            selective.append(i)
            total += df[i]
    if not selective and present:
        selective = [present[0]]
    common = [i for i in present if i not in selective]
    return selective, common


@functools.lru_cache(maxsize=64)
def keyword_sql(terms: int) -> str:
    """The keyword leg's statement for ``terms`` scored lexemes: bounded candidates (rows
    of the selective lexemes, rows holding two common ones), then exact BM25 on those rows
    only. Each lexeme is a parameter parsed once per statement, never per row, and the
    score is one expression: ``(k1 + 1) * sum(idf * (1 - norm / (tf + norm)))`` with
    ``norm = k1 * (1 - b + b * length / avgdl)`` (Okapi BM25 rewritten so that each term
    frequency is computed once)."""
    norm = "($7::float8 * (1 - $8::float8 + $8::float8 * c.lex_count / $9::float8))"
    score = " + ".join(
        f"${13 + 2 * i}::float8 * (1 - {norm} /"
        f" (round(ts_rank_cd(c.tsv, ${12 + 2 * i}::tsquery, 0) * 10) + {norm}))"
        for i in range(terms)
    )
    where = (
        "c.tenant_id = $1 AND c.collection_id = ANY($2::text[])"
        " AND ($5::jsonb IS NULL OR c.metadata @> $5::jsonb)"
    )
    # Scored inside each bounded scan (the rows are at hand; no second fetch by key).
    return (
        f"SELECT s.chunk_id, max(s.score) AS score FROM ("
        f"(SELECT c.chunk_id, $6::float8 * ({score}) AS score FROM rag.chunks c"
        f" WHERE {where} AND c.tsv @@ $3::tsquery LIMIT $11)"
        f" UNION ALL (SELECT c.chunk_id, $6::float8 * ({score}) AS score FROM rag.chunks c"
        f" WHERE $4::tsquery IS NOT NULL AND {where} AND c.tsv @@ $4::tsquery LIMIT $11)"
        ") s GROUP BY s.chunk_id ORDER BY score DESC, s.chunk_id LIMIT $10"
    )


async def keyword_params(
    conn: asyncpg.Connection, scope: Scope, query: str, limit: int
) -> tuple[str, tuple[Any, ...]] | None:
    """The keyword leg's statement and parameters for a question (None: nothing can
    match). At most :data:`MAX_TERMS` lexemes score, the rarest first."""
    with stage("keyword.lexemes"):
        lexemes = await query_lexemes(conn, query)
    if not lexemes:
        return None
    with stage("keyword.stats"):
        n, avgdl = await collection_stats(conn, scope)
    if n <= 0:
        return None
    with stage("keyword.df"):
        df = await document_frequencies(conn, scope, lexemes, n)
    selective, common = plan_candidates(lexemes, df, n)
    if not selective:
        return None
    present = (selective + common)[:MAX_TERMS]
    common = [i for i in common if i in present]
    pairs = [
        f"({_quote_lexeme(lexemes[a])} & {_quote_lexeme(lexemes[b])})"
        for x, a in enumerate(common)
        for b in common[x + 1 :]
    ]
    terms: list[Any] = []
    for i in present:
        terms += [_quote_lexeme(lexemes[i]), math.log(1 + (n - df[i] + 0.5) / (df[i] + 0.5))]
    return keyword_sql(len(present)), (
        scope.tenant,
        scope.collection_ids,
        " | ".join(_quote_lexeme(lexemes[i]) for i in selective),
        " | ".join(pairs) if pairs else None,
        scope.jsonb_filter,
        BM25_K1 + 1,
        BM25_K1,
        BM25_B,
        avgdl,
        limit,
        CANDIDATE_BUDGET,
        *terms,
    )


async def keyword_leg(
    db: Database, scope: Scope, query: str, limit: int
) -> list[tuple[str, float]]:
    """Chunk ids by BM25 over the question's lexemes, best first (one connection).

    Cost is bounded by ``CANDIDATE_BUDGET`` scored rows and ``DF_CAP`` row visits per
    uncached lexeme, whatever the collection's size (see the module docstring).
    """
    async with _connection(db, "keyword") as conn:
        planned = await keyword_params(conn, scope, query, limit)
        if planned is None:
            return []
        sql, params = planned
        with stage("keyword.scan"):
            rows = await conn.fetch(sql, *params)
    return [(r["chunk_id"], float(r["score"] or 0.0)) for r in rows]


def clear_caches() -> None:
    """Forget the cached statistics (benchmarks measure the cold path with it)."""
    _STATS.items.clear()
    _DF.items.clear()
    _COMMON.update(at=-1e9, freq={}, rows=0.0)


def rrf(
    legs: Sequence[tuple[Sequence[tuple[str, float]], float]], k: int
) -> list[tuple[str, float]]:
    """Weighted reciprocal rank fusion of ranked ``(id, score)`` lists.

    Equal fused scores (one item first in one leg, the other first in the other) are
    broken by the best position an item reached in any leg, then by leg order (the first
    leg wins), and only then by id — ids are random, so ordering by them alone would make
    the ranking change between two ingests of the same data.
    """
    fused: dict[str, float] = {}
    best: dict[str, tuple[int, int]] = {}  # item -> (best rank, index of that leg)
    for leg, (ranked, weight) in enumerate(legs):
        if weight <= 0:
            continue
        for rank, (item, _) in enumerate(ranked, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
            best[item] = min(best.get(item, (rank, leg)), (rank, leg))
    return sorted(fused.items(), key=lambda kv: (-kv[1], best[kv[0]], kv[0]))


async def hydrate(db: Database, tenant: str, ids: list[str]) -> dict[str, asyncpg.Record]:
    """Text, metadata and document of each chunk id."""
    if not ids:
        return {}
    async with _connection(db, "hydrate") as conn:
        rows = await conn.fetch(
            "SELECT c.chunk_id, c.collection_id, c.document_id, d.source_id, d.title, c.text,"
            " c.section, c.metadata, c.location FROM rag.chunks c JOIN rag.documents d"
            " ON d.tenant_id = c.tenant_id AND d.document_id = c.document_id"
            " WHERE c.tenant_id = $1 AND c.chunk_id = ANY($2::text[])",
            tenant,
            ids,
        )
    return {r["chunk_id"]: r for r in rows}
