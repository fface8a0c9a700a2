"""The keyword leg as it was before the bounded one (commit 1770369), kept as the bench's
baseline: every lexeme's document frequency counted in full, and every row holding a
selective lexeme scored with BM25 — cost grows with the rows that match."""

from __future__ import annotations

import math

from bus.postgres import Database
from workers.rag.search import (
    BM25_B,
    BM25_K1,
    COMMON_TERM_SHARE,
    Scope,
    _quote_lexeme,
    query_lexemes,
)

#: The unbounded leg counts and scores every matching row: at 1M chunks with cold buffers
#: one question can pass the pool's 10 s command timeout.
BASELINE_TIMEOUT_S = 120.0


async def keyword_leg_unbounded(
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
            timeout=BASELINE_TIMEOUT_S,
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
            timeout=BASELINE_TIMEOUT_S,
        )
    return [(r["chunk_id"], float(r["score"] or 0.0)) for r in rows]
