"""RAG Service over real NATS, Postgres + pgvector and the cache, with the test-only gateway."""

from __future__ import annotations

import pytest

import workers.rag.search as search_module
from bus.errors import Conflict, InvalidRequest, NotFound
from schemas.rag import (
    Collection,
    DocumentDetail,
    IngestResponse,
    ListDocumentsResponse,
    QueryResponse,
    SearchResponse,
)
from tests.rag_support import create_collection, ctx, unique

pytestmark = pytest.mark.usefixtures("rag_mesh")

PUMP_DOCS = [
    (
        "pump-1",
        "Centrifugal pump maintenance",
        "Replace the pump valve seals every six months. "
        "A worn valve seal lets the centrifugal pump lose pressure.",
    ),
    (
        "pump-2",
        "Valve replacement guide",
        "To replace a pump valve, drain the pump, remove the "
        "valve cover and fit the replacement valve.",
    ),
    (
        "pump-3",
        "Pump pressure problems",
        "Low pump pressure usually means a leaking valve or a "
        "blocked pump inlet. Check the valve first.",
    ),
    (
        "pump-4",
        "Choosing a replacement pump",
        "When a pump fails, choose a replacement pump with the same flow rate and valve size.",
    ),
    (
        "pump-5",
        "Valve types",
        "Gate valves, ball valves and check valves protect a pump from "
        "backflow. Replace a check valve when the pump hums.",
    ),
    (
        "pump-6",
        "Pump noise",
        "A noisy pump often has a loose valve or worn bearings. Replace the "
        "bearings and tighten the valve.",
    ),
]
PART_DOC = (
    "catalogue-7",
    "Fastener catalogue appendix",
    "Miscellaneous hardware: order number XK4471B covers the stainless bracket kit.",
)


async def ingest(client, tenant, collection_id, docs, **extra) -> IngestResponse:
    return await client.request(
        "rag.ingest.request",
        {
            "collection_id": collection_id,
            "documents": [{"source_id": s, "title": t, "text": x, **extra} for s, t, x in docs],
        },
        ctx(tenant),
        IngestResponse,
    )


async def search(client, tenant, collection_ids, query, **kw) -> SearchResponse:
    return await client.request(
        "rag.search.request",
        {"collection_ids": collection_ids, "query": query, **kw},
        ctx(tenant),
        SearchResponse,
    )


async def test_create_collection_learns_dimensions_from_the_embedder(client):
    out = await client.request(
        "rag.create_collection.request", {"name": unique("dims")}, ctx(), Collection
    )
    assert out.dimensions == 384 and out.embedding_model == "local-embed"
    assert out.collection_id.startswith("col-")


async def test_duplicate_collection_name_is_a_conflict_for_the_same_tenant_only(client):
    name = unique("dup")
    await create_collection(client, "acme", name)
    with pytest.raises(Conflict):
        await create_collection(client, "acme", name)
    await create_collection(client, "globex", name)


async def test_ingest_indexes_before_answering(client):
    cid = await create_collection(client)
    out = await ingest(client, "acme", cid, PUMP_DOCS[:2])
    assert [d.status for d in out.documents] == ["created", "created"]
    found = await search(client, "acme", [cid], "replace a pump valve", top_k=2)
    assert {r.source_id for r in found.results} == {"pump-1", "pump-2"}


async def test_reingesting_unchanged_document_creates_nothing(client, fake_gateway):
    cid = await create_collection(client)
    first = await ingest(client, "acme", cid, PUMP_DOCS[:1])
    embedded = fake_gateway.embedded_texts
    again = await ingest(client, "acme", cid, PUMP_DOCS[:1])
    assert again.documents[0].status == "unchanged"
    assert again.documents[0].document_id == first.documents[0].document_id
    assert fake_gateway.embedded_texts == embedded  # nothing re-embedded
    doc = await client.request(
        "rag.get_document.request",
        {"document_id": first.documents[0].document_id},
        ctx(),
        DocumentDetail,
    )
    assert len(doc.chunks) == doc.chunk_count == first.documents[0].chunks


async def test_changed_document_replaces_its_chunks(client):
    cid = await create_collection(client)
    long_text = "\n\n".join(f"# Part {i}\n\n" + "pump words here. " * 120 for i in range(3))
    first = await ingest(client, "acme", cid, [("manual", "Manual", long_text)])
    assert first.documents[0].chunks > 3
    second = await ingest(client, "acme", cid, [("manual", "Manual", "A short new manual.")])
    assert second.documents[0].status == "updated"
    assert second.documents[0].document_id == first.documents[0].document_id
    doc = await client.request(
        "rag.get_document.request",
        {"document_id": first.documents[0].document_id},
        ctx(),
        DocumentDetail,
    )
    assert [c.text for c in doc.chunks] == ["A short new manual."]


async def test_tenant_b_cannot_use_tenant_a_collection_ids(client):
    cid = await create_collection(client, "acme")
    await ingest(client, "acme", cid, PUMP_DOCS[:1])
    with pytest.raises(NotFound):
        await search(client, "globex", [cid], "pump")
    with pytest.raises(NotFound):
        await client.request(
            "rag.query.request", {"collection_ids": [cid], "question": "pump?"}, ctx("globex")
        )
    with pytest.raises(NotFound):
        await ingest(client, "globex", cid, PUMP_DOCS[1:2])
    with pytest.raises(NotFound):
        await client.request("rag.get_collection.request", {"collection_id": cid}, ctx("globex"))


async def test_tenant_b_search_never_returns_tenant_a_chunks(client):
    a = await create_collection(client, "acme")
    b = await create_collection(client, "globex")
    await ingest(client, "acme", a, PUMP_DOCS)
    await ingest(client, "globex", b, [("g-1", "Globex note", "Our pump valve is blue.")])
    a_chunks = {
        r.chunk_id for r in (await search(client, "acme", [a], "pump valve", top_k=50)).results
    }
    for mode in ("hybrid", "vector", "keyword"):
        found = await search(
            client, "globex", [b], "replace the pump valve seals", mode=mode, top_k=50
        )
        assert [r.source_id for r in found.results] == ["g-1"]
        assert not {r.chunk_id for r in found.results} & a_chunks


async def test_hybrid_ranks_an_exact_part_number_that_dense_search_misses(client):
    cid = await create_collection(client)
    await ingest(client, "acme", cid, [*PUMP_DOCS, PART_DOC])
    query = "pump valve replacement part XK4471B"
    dense = await search(client, "acme", [cid], query, mode="vector", top_k=3)
    assert "catalogue-7" not in [r.source_id for r in dense.results]
    keyword = await search(client, "acme", [cid], query, mode="keyword", top_k=3)
    assert keyword.results[0].source_id == "catalogue-7"
    hybrid = await search(client, "acme", [cid], query, top_k=3)
    assert "catalogue-7" in [r.source_id for r in hybrid.results]


async def test_fusion_weights_choose_between_the_legs(client):
    cid = await create_collection(client)
    await ingest(client, "acme", cid, [*PUMP_DOCS, PART_DOC])
    query = "pump valve replacement part XK4471B"
    keyword_only = await search(client, "acme", [cid], query, vector_weight=0, top_k=1)
    assert keyword_only.results[0].source_id == "catalogue-7"
    dense_only = await search(client, "acme", [cid], query, keyword_weight=0, top_k=1)
    assert dense_only.results[0].source_id != "catalogue-7"


async def test_keyword_leg_matches_any_word_of_a_question(client):
    cid = await create_collection(client)
    await ingest(client, "acme", cid, PUMP_DOCS)
    # No chunk holds all of these words: an AND query (plainto_tsquery) would find nothing.
    found = await search(
        client, "acme", [cid], "why does my noisy pump hum at night?", mode="keyword"
    )
    assert found.results and found.results[0].source_id in {"pump-6", "pump-5"}


async def test_metadata_filters_restrict_results(client):
    cid = await create_collection(client)
    await client.request(
        "rag.ingest.request",
        {
            "collection_id": cid,
            "documents": [
                {
                    "source_id": s,
                    "title": t,
                    "text": x,
                    "metadata": {"site": "north" if i % 2 else "south"},
                }
                for i, (s, t, x) in enumerate(PUMP_DOCS)
            ],
        },
        ctx(),
    )
    for mode in ("hybrid", "vector", "keyword"):
        found = await search(
            client, "acme", [cid], "pump valve", mode=mode, filters={"site": "north"}, top_k=10
        )
        assert len(found.results) == 3
        assert all(r.metadata == {"site": "north"} for r in found.results)


async def test_top_k_is_honoured_in_every_mode(client):
    cid = await create_collection(client)
    await ingest(client, "acme", cid, PUMP_DOCS)
    for mode in ("hybrid", "vector", "keyword"):
        found = await search(client, "acme", [cid], "pump valve", mode=mode, top_k=4)
        assert len(found.results) == 4


async def test_small_tenant_gets_top_k_from_a_table_owned_by_another(client, monkeypatch):
    big = await create_collection(client, "bigcorp")
    docs = [(f"b-{i}", None, f"Bulk record {i} about pumps, valves and seals.") for i in range(60)]
    await ingest(client, "bigcorp", big, docs)
    small = await create_collection(client, "tiny")
    await ingest(
        client, "tiny", small, [(f"t-{i}", None, f"Tiny note {i} on valves.") for i in range(5)]
    )
    # Force the HNSW plan even for 5 candidates: it must still return all 5 (post-filtered
    # HNSW alone would not), repeatedly, so asyncpg's generic plans are exercised too.
    monkeypatch.setattr(search_module, "EXACT_SCAN_LIMIT", 2)
    for _ in range(7):
        found = await search(client, "tiny", [small], "valves", mode="vector", top_k=5)
        assert sorted(r.source_id for r in found.results) == [f"t-{i}" for i in range(5)]


async def test_searching_collections_of_different_embedders_is_refused(client):
    a = await create_collection(client, embedding_model="local-embed")
    b = await create_collection(client, embedding_model="other-embed")
    with pytest.raises(InvalidRequest):
        await search(client, "acme", [a, b], "pump")
    await search(client, "acme", [a, b], "pump", mode="keyword")


async def test_query_answers_with_citations_that_quote_the_chunks(client, fake_gateway):
    cid = await create_collection(client)
    ingested = await ingest(client, "acme", cid, PUMP_DOCS)
    ids = {d.source_id: d.document_id for d in ingested.documents}
    out = await client.request(
        "rag.query.request",
        {"collection_ids": [cid], "question": "How often should pump valve seals be replaced?"},
        ctx(),
        QueryResponse,
    )
    assert "six months" in out.answer
    assert out.citations and out.citations[0].source_id == "pump-1"
    cited = out.citations[0]
    assert cited.document_id == ids["pump-1"]
    doc = await client.request(
        "rag.get_document.request", {"document_id": cited.document_id}, ctx(), DocumentDetail
    )
    chunk = next(c for c in doc.chunks if c.chunk_id == cited.chunk_id)
    assert cited.quote in chunk.text and "six months" in cited.quote


async def test_query_is_cached_until_the_collection_changes(client, fake_gateway):
    cid = await create_collection(client)
    await ingest(client, "acme", cid, PUMP_DOCS[:3])
    question = {"collection_ids": [cid], "question": "What causes low pump pressure?"}
    first = await client.request("rag.query.request", question, ctx(), QueryResponse)
    calls = fake_gateway.generate_calls
    second = await client.request("rag.query.request", question, ctx(), QueryResponse)
    assert second.cached and not first.cached
    assert second.answer == first.answer and fake_gateway.generate_calls == calls
    await ingest(client, "acme", cid, PUMP_DOCS[3:4])
    third = await client.request("rag.query.request", question, ctx(), QueryResponse)
    assert not third.cached and fake_gateway.generate_calls == calls + 1


async def test_query_without_matches_answers_without_calling_the_model(client, fake_gateway):
    cid = await create_collection(client)
    calls = fake_gateway.generate_calls
    out = await client.request(
        "rag.query.request",
        {"collection_ids": [cid], "question": "anything?"},
        ctx(),
        QueryResponse,
    )
    assert out.citations == [] and fake_gateway.generate_calls == calls


async def test_documents_list_update_reindex_and_delete(client):
    cid = await create_collection(client)
    await ingest(client, "acme", cid, PUMP_DOCS[:3])
    page1 = await client.request(
        "rag.list_documents.request",
        {"collection_id": cid, "limit": 2},
        ctx(),
        ListDocumentsResponse,
    )
    page2 = await client.request(
        "rag.list_documents.request",
        {"collection_id": cid, "limit": 2, "cursor": page1.next_cursor},
        ctx(),
        ListDocumentsResponse,
    )
    assert len(page1.documents) == 2 and len(page2.documents) == 1 and not page2.next_cursor
    doc_id = page1.documents[0].document_id
    updated = await client.request(
        "rag.update_document.request",
        {"document_id": doc_id, "metadata": {"reviewed": True}},
        ctx(),
    )
    assert updated["metadata"] == {"reviewed": True}
    found = await search(client, "acme", [cid], "pump", filters={"reviewed": True})
    assert {r.document_id for r in found.results} == {doc_id}
    again = await client.request("rag.reindex_document.request", {"document_id": doc_id}, ctx())
    assert again["chunks"] >= 1
    await client.request("rag.delete_document.request", {"document_id": doc_id}, ctx())
    with pytest.raises(NotFound):
        await client.request("rag.get_document.request", {"document_id": doc_id}, ctx())
    found = await search(client, "acme", [cid], "pump valve", top_k=20)
    assert doc_id not in {r.document_id for r in found.results}


async def test_delete_collection_removes_everything(client):
    cid = await create_collection(client)
    await ingest(client, "acme", cid, PUMP_DOCS[:2])
    out = await client.request("rag.delete_collection.request", {"collection_id": cid}, ctx())
    assert out == {"deleted": True, "documents": 2}
    with pytest.raises(NotFound):
        await search(client, "acme", [cid], "pump")
