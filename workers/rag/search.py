"""Retrieval legs on Postgres and their fusion.

* **Vector leg** (cosine). pgvector 0.6.2's HNSW returns at most ``hnsw.ef_search`` rows
  and filters *after* the index scan, so a tenant owning a small share of the table gets
  almost nothing back. Per query we count the candidate rows (bounded, on the
  ``(tenant_id, collection_id)`` index): below :data:`EXACT_SCAN_LIMIT` the leg is an exact
  scan ordered by distance (no index can be chosen: the ORDER BY expression is not the
  index's); above it, HNSW with ``SET LOCAL hnsw.ef_search`` raised over the leg size, and
  an exact scan if HNSW still comes back short (a selective filter).
* **Keyword leg** (BM25 on ``tsvector``). ``plainto_tsquery`` ANDs every term, so a
  question matches almost nothing. The question's lexemes (same ``english`` config as the
  index) are OR-ed for candidates, and each candidate is scored with Okapi BM25: IDF from
  each lexeme's document frequency in the searched collections (GIN counts), term
  frequency from ``ts_rank_cd`` of a one-lexeme query (0.1 per occurrence), length from
  the chunk's lexeme count against the collections' average.
* **Fusion**: weighted reciprocal rank fusion, ``sum(w_leg / (rrf_k + rank))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from bus.postgres import Database
from bus.sql import vector_literal
from workers.rag.store import TS_CONFIG

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


@dataclass(frozen=True)
class Scope:
    tenant: str
    collection_ids: list[str]
    dimensions: int
    filters: dict[str, Any] | None

    @property
    def jsonb_filter(self) -> dict[str, Any] | None:
        """The ``$n::jsonb`` containment filter (the pool's codec encodes it), or None."""
        return self.filters or None


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
    async with db.connection() as conn:
        candidates = await candidate_count(conn, scope, EXACT_SCAN_LIMIT)
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


async def keyword_leg(
    db: Database, scope: Scope, query: str, limit: int
) -> list[tuple[str, float]]:
    """Chunk ids by BM25 over the question's lexemes (OR), best first (one connection)."""
    async with db.connection() as conn:
        lexemes = await query_lexemes(conn, query)
        if not lexemes:
            return []
        terms = [_quote_lexeme(lx) for lx in lexemes]
        stats = await conn.fetchrow(
            "SELECT coalesce(sum(chunk_count), 0)::float8 AS n,"
            " coalesce(sum(lex_total), 0)::float8 AS lex FROM rag.documents"
            " WHERE tenant_id = $1 AND collection_id = ANY($2::text[])",
            scope.tenant,
            scope.collection_ids,
        )
        n = float(stats["n"])
        if n <= 0:
            return []
        avgdl = max(1.0, float(stats["lex"]) / n)
        dfs = await conn.fetch(
            "SELECT t.i, (SELECT count(*) FROM rag.chunks c WHERE c.tenant_id = $1"
            "   AND c.collection_id = ANY($2::text[]) AND c.tsv @@ t.q::tsquery) AS df"
            " FROM unnest($3::text[]) WITH ORDINALITY AS t(q, i)",
            scope.tenant,
            scope.collection_ids,
            terms,
        )
        df = {int(r["i"]) - 1: int(r["df"]) for r in dfs}
        present = [i for i in range(len(terms)) if df.get(i, 0) > 0]
        if not present:
            return []
        idf = [math.log(1 + (n - df[i] + 0.5) / (df[i] + 0.5)) for i in present]
        selective = [i for i in present if df[i] <= COMMON_TERM_SHARE * n] or present
        rows = await conn.fetch(
            "SELECT c.chunk_id, (SELECT sum(w.idf * f.tf * $7::float8 /"
            "     (f.tf + $8::float8 * (1 - $9::float8 + $9::float8 * c.lex_count / $10::float8)))"
            "   FROM unnest($3::text[], $4::float8[]) AS w(q, idf)"
            "   CROSS JOIN LATERAL (SELECT round(ts_rank_cd(c.tsv, w.q::tsquery, 0) * 10) AS tf) f"
            " ) AS score"
            " FROM rag.chunks c"
            " WHERE c.tenant_id = $1 AND c.collection_id = ANY($2::text[])"
            " AND c.tsv @@ $5::tsquery AND ($6::jsonb IS NULL OR c.metadata @> $6::jsonb)"
            " ORDER BY score DESC, c.chunk_id LIMIT $11",
            scope.tenant,
            scope.collection_ids,
            [terms[i] for i in present],
            idf,
            " | ".join(terms[i] for i in selective),
            scope.jsonb_filter,
            BM25_K1 + 1,
            BM25_K1,
            BM25_B,
            avgdl,
            limit,
        )
    return [(r["chunk_id"], float(r["score"] or 0.0)) for r in rows]


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
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT c.chunk_id, c.document_id, d.source_id, d.title, c.text, c.section,"
            " c.metadata, c.location FROM rag.chunks c JOIN rag.documents d"
            " ON d.tenant_id = c.tenant_id AND d.document_id = c.document_id"
            " WHERE c.tenant_id = $1 AND c.chunk_id = ANY($2::text[])",
            tenant,
            ids,
        )
    return {r["chunk_id"]: r for r in rows}
