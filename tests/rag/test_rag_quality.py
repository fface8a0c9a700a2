"""Retrieval quality on a small labelled set (tests/data/rag_eval.json) through rag.search.

With the test-only embedder (hashed words and trigrams) the dense leg is itself mostly
lexical, so this shows the fusion is sound (hybrid at least as good as BM25 alone), not
the size of the gain a real embedder brings; the lead's end-to-end suite repeats it with
the local MiniLM embedder through the real gateway.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from schemas.rag import SearchResponse
from tests.rag_support import create_collection, ctx

pytestmark = pytest.mark.usefixtures("rag_mesh")

EVAL = json.loads((Path(__file__).parents[1] / "data" / "rag_eval.json").read_text())
K = 10


def ndcg(ranked: list[str], relevant: set[str], k: int = K) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal


def recall(ranked: list[str], relevant: set[str], k: int = K) -> float:
    return len(set(ranked[:k]) & relevant) / len(relevant)


async def evaluate(client, cid: str, mode: str) -> tuple[float, float]:
    ndcgs, recalls = [], []
    for item in EVAL["queries"]:
        out = await client.request(
            "rag.search.request",
            {"collection_ids": [cid], "query": item["q"], "mode": mode, "top_k": K},
            ctx("eval"),
            SearchResponse,
        )
        ranked = [r.source_id for r in out.results]
        ndcgs.append(ndcg(ranked, set(item["relevant"])))
        recalls.append(recall(ranked, set(item["relevant"])))
    return sum(ndcgs) / len(ndcgs), sum(recalls) / len(recalls)


async def test_hybrid_is_at_least_as_good_as_keyword_alone(client):
    cid = await create_collection(client, "eval")
    await client.request(
        "rag.ingest.request",
        {
            "collection_id": cid,
            "documents": [
                {"source_id": d["id"], "title": d["title"], "text": d["text"]}
                for d in EVAL["documents"]
            ],
        },
        ctx("eval"),
    )
    scores = {mode: await evaluate(client, cid, mode) for mode in ("keyword", "vector", "hybrid")}
    print("nDCG@10 / recall@10:", {m: (round(n, 3), round(r, 3)) for m, (n, r) in scores.items()})
    assert scores["hybrid"][0] >= scores["keyword"][0]
    assert scores["hybrid"][1] >= scores["keyword"][1]
    assert scores["hybrid"][0] > 0.6  # the set is easy enough that a sound ranker does well
