"""The bounded keyword leg: capped document frequencies, a candidate budget, statistics
cached under the collections' versions (workers/rag/search.py)."""

from __future__ import annotations

import time

import pytest

import workers.rag.search as search_module
from bus.postgres import create_database
from schemas.rag import IngestResponse, SearchResponse
from tests.rag_support import create_collection, ctx
from workers.rag import timings
from workers.rag.search import Scope, document_frequencies, over_the_cap, plan_candidates


async def ingest(client, tenant, collection_id, docs) -> IngestResponse:
    return await client.request(
        "rag.ingest.request",
        {
            "collection_id": collection_id,
            "documents": [{"source_id": s, "text": x} for s, x in docs],
        },
        ctx(tenant),
        IngestResponse,
    )


async def keyword(client, tenant, collection_id, query, top_k=10) -> list[str]:
    out = await client.request(
        "rag.search.request",
        {"collection_ids": [collection_id], "query": query, "mode": "keyword", "top_k": top_k},
        ctx(tenant),
        SearchResponse,
    )
    return [r.source_id for r in out.results]


def test_rare_lexemes_select_candidates_within_the_budget_and_common_ones_only_score():
    lexemes = ["pump", "impel", "valv", "gasket"]
    df = [900.0, 3.0, 800.0, 40.0]
    selective, common = plan_candidates(lexemes, df, 1000.0)
    assert selective == [1, 3]  # rarest first
    assert common == [2, 0]
    # Nothing rare enough: the rarest lexeme still selects (the SQL bounds its rows).
    selective, common = plan_candidates(["pump", "valv"], [900.0, 800.0], 1000.0)
    assert selective == [1] and common == [0]
    # Lexemes nobody holds neither select nor score.
    assert plan_candidates(["zzz"], [0.0], 1000.0) == ([], [])


def test_a_lexeme_is_over_the_cap_only_when_the_statistics_leave_no_doubt():
    cap = search_module.DF_CAP
    # One collection holding (nearly) the whole table: a word in 1.1 % of 1,001,000
    # chunks is in at least 11,011 - 1,000 of the collection's 1,000,000.
    assert over_the_cap(0.011, 1_001_000, 1_000_000)
    # ... but the same word may lie wholly outside a 1,000-chunk collection.
    assert not over_the_cap(0.011, 1_001_000, 1_000)
    # Twice the cap, or it is counted (the shares are sampled); no statistics: counted.
    assert over_the_cap(2 * cap / 1_000_000, 1_000_000, 1_000_000)
    assert not over_the_cap(2 * cap / 1_000_000 * 0.99, 1_000_000, 1_000_000)
    assert not over_the_cap(None, 1_000_000, 1_000_000)
    assert not over_the_cap(0.5, 1_000_000, 0)


@pytest.mark.usefixtures("rag_mesh")
async def test_frequencies_the_statistics_put_over_the_cap_are_not_counted(
    client, settings, monkeypatch
):
    """With statistics saying that "pump" is in 90 % of a table that is this collection,
    its frequency is their estimate and no count runs; "gasket" (not in them) and
    "valve" (in too few chunks to be sure) are counted exactly."""
    monkeypatch.setattr(search_module, "DF_CAP", 3)
    monkeypatch.setattr(search_module, "_DF", search_module._Lru(1000))
    cid = await create_collection(client, "kwstats")
    docs = [(f"d{i}", f"The pump number {i} was checked.") for i in range(10)]
    docs += [("v1", "A pump valve."), ("v2", "A valve gasket.")]
    await ingest(client, "kwstats", cid, docs)
    monkeypatch.setattr(
        search_module,
        "_COMMON",
        {"at": time.monotonic(), "freq": {"pump": 0.9, "valv": 0.1}, "rows": 12.0},
    )
    db = await create_database(settings.database_url, min_size=1, max_size=1)
    try:
        scope = Scope("kwstats", [cid], 384, None, (1,))
        record = timings.collect()
        async with db.connection() as conn:
            df = await document_frequencies(conn, scope, ["pump", "gasket", "valv"], 12.0)
        # pump: 0.9 * 12 - 0 outside >= 2 * cap: estimated, min(n, n * share) = 10.8.
        assert df == [pytest.approx(10.8), 1.0, 2.0]
        assert record["keyword.df_missing.n"] == 3 and record["keyword.df_counted.n"] == 2
    finally:
        await db.close()


@pytest.mark.usefixtures("rag_mesh")
async def test_a_rare_word_ranks_first_when_the_common_words_pass_the_count_cap(
    client, monkeypatch
):
    monkeypatch.setattr(search_module, "DF_CAP", 3)
    monkeypatch.setattr(search_module, "CANDIDATE_BUDGET", 4)
    cid = await create_collection(client, "kwcap")
    docs = [(f"common-{i}", f"The pump valve number {i} was checked.") for i in range(12)]
    docs.append(("rare", "The impeller of this pump was replaced."))
    await ingest(client, "kwcap", cid, docs)
    assert (await keyword(client, "kwcap", cid, "impeller pump"))[0] == "rare"
    # Only common words: rows holding both are candidates, bounded by the budget.
    both = await keyword(client, "kwcap", cid, "pump valve")
    assert both and len(both) <= 4 and all(s.startswith("common-") for s in both)


@pytest.mark.usefixtures("rag_mesh")
async def test_cached_keyword_statistics_never_outlive_a_write(client):
    cid = await create_collection(client, "kwcache")
    await ingest(client, "kwcache", cid, [("a", "The pump valve was checked.")])
    # "gearbox" is in no chunk: its document frequency (0) is cached under this version.
    assert await keyword(client, "kwcache", cid, "gearbox") == []
    await ingest(client, "kwcache", cid, [("b", "The gearbox oil was changed.")])
    assert await keyword(client, "kwcache", cid, "gearbox") == ["b"]


@pytest.mark.usefixtures("rag_mesh")
async def test_cached_frequencies_belong_to_one_tenant_and_one_collection_version(
    client, monkeypatch
):
    monkeypatch.setattr(search_module, "_DF", search_module._Lru(1000))  # this test's entries

    def cached(tenant: str) -> dict[tuple[int, ...], float]:
        """gearbox's cached frequency in ``tenant``'s collections, by collection version."""
        return {
            key[2]: value
            for (key, lexeme), value in search_module._DF.items.items()
            if key[0] == tenant and lexeme == "gearbox"
        }

    a = await create_collection(client, "dfa")
    b = await create_collection(client, "dfb")
    await ingest(client, "dfa", a, [("a1", "The gearbox was oiled.")])
    await ingest(client, "dfb", b, [("b1", "A gearbox."), ("b2", "The gearbox manual.")])
    assert await keyword(client, "dfa", a, "gearbox") == ["a1"]
    [(version, df)] = cached("dfa").items()
    assert df == 1.0 and cached("dfb") == {}  # nothing computed for, or shared with, B
    assert sorted(await keyword(client, "dfb", b, "gearbox")) == ["b1", "b2"]
    assert list(cached("dfb").values()) == [2.0] and cached("dfa") == {version: 1.0}
    # A write bumps A's version: the next search counts again, under the new version.
    await ingest(client, "dfa", a, [("a2", "A second gearbox.")])
    assert sorted(await keyword(client, "dfa", a, "gearbox")) == ["a1", "a2"]
    now = cached("dfa")
    assert len(now) == 2 and now[version] == 1.0
    assert [df for v, df in now.items() if v != version] == [2.0]
