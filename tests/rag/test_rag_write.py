"""RAG's chunk write path over the real Postgres + pgvector and JetStream: a document's
write is all or nothing, and a redelivered index job never duplicates its chunks."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest

import workers.rag.store as store_module
from bus.jetstream import publish
from bus.postgres import Database, create_database
from bus.settings import Settings
from bus.uploads import put_stream
from bus.worker import WorkerEnv
from schemas.ingestion import INDEX_SUBJECT, IndexJob
from tests.rag_support import create_collection, ctx, fake_gateway, rag_mesh, unique
from workers.rag import vectors
from workers.rag.chunking import Piece
from workers.rag.store import CollectionRow, RagStore, content_hash

__all__ = ["fake_gateway", "rag_mesh"]  # module-scoped fixtures used here

pytestmark = pytest.mark.usefixtures("rag_mesh")

DIMS = 384


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    assert settings.database_url
    database = await create_database(settings.database_url, init=vectors.register)
    yield database
    await database.close()


def pieces(n: int, word: str = "pump") -> list[Piece]:
    return [
        Piece(text=f"{word} chunk {i} about the valve", section=None, tokens=6) for i in range(n)
    ]


def unit_vectors(n: int, seed: int = 1) -> list[list[float]]:
    out = []
    for i in range(n):
        v = [math.sin(seed * 7 + i * 13 + d) for d in range(DIMS)]
        norm = math.sqrt(sum(x * x for x in v))
        out.append([x / norm for x in v])
    return out


async def chunk_rows(db: Database, tenant: str, collection_id: str) -> list[tuple[str, int]]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT document_id, ord FROM rag.chunks WHERE tenant_id = $1 AND collection_id = $2"
            " ORDER BY document_id, ord",
            tenant,
            collection_id,
        )
    return [(r["document_id"], r["ord"]) for r in rows]


async def write(
    store: RagStore, collection: CollectionRow, source: str, parts: list[Piece], vecs, **kw
):  # type: ignore[no-untyped-def]
    text = " ".join(p.text for p in parts)
    return await store.write_document(
        "acme",
        collection,
        source_id=source,
        title="Manual",
        text=text,
        digest=content_hash("Manual", text),
        metadata={},
        pieces=parts,
        vectors=vecs,
        job_id=None,
        object_name=None,
        **kw,
    )


async def test_a_document_write_that_fails_midway_leaves_nothing(client, db, monkeypatch):
    # Several INSERT statements per document (3 rows each here); the last one fails
    # (pgvector refuses NaN): neither the document nor its first chunks remain.
    monkeypatch.setattr(store_module, "WRITE_BATCH", 3)
    store = RagStore(db)
    collection = await store.collection("acme", await create_collection(client))
    bad = unit_vectors(8)
    bad[7][0] = float("nan")
    with pytest.raises(Exception, match="NaN"):
        await write(store, collection, "doc-a", pieces(8), bad)
    assert await chunk_rows(db, "acme", collection.collection_id) == []
    assert await store.find_document("acme", collection.collection_id, "doc-a") is None


async def test_a_failed_replacement_keeps_the_previous_chunks(client, db, monkeypatch):
    monkeypatch.setattr(store_module, "WRITE_BATCH", 3)
    store = RagStore(db)
    collection = await store.collection("acme", await create_collection(client))
    first = await write(store, collection, "doc-b", pieces(5), unit_vectors(5))
    before = await chunk_rows(db, "acme", collection.collection_id)
    bad = unit_vectors(8, seed=2)
    bad[6][1] = float("nan")
    with pytest.raises(Exception, match="NaN"):
        await write(store, collection, "doc-b", pieces(8, "valve"), bad)
    assert await chunk_rows(db, "acme", collection.collection_id) == before
    row = await store.document("acme", first.document_id)
    assert row["chunk_count"] == 5 and "pump chunk 0" in row["body"]


async def test_large_documents_are_written_in_several_statements_whole(client, db, monkeypatch):
    monkeypatch.setattr(store_module, "WRITE_BATCH", 4)
    store = RagStore(db)
    collection = await store.collection("acme", await create_collection(client))
    result = await write(store, collection, "doc-c", pieces(11), unit_vectors(11))
    assert (result.status, result.chunks) == ("created", 11)
    rows = await chunk_rows(db, "acme", collection.collection_id)
    assert [o for _, o in rows] == list(range(11))
    async with db.connection() as conn:
        lex = await conn.fetchval(
            "SELECT d.lex_total = (SELECT sum(c.lex_count) FROM rag.chunks c"
            "  WHERE c.tenant_id = d.tenant_id AND c.document_id = d.document_id)"
            " FROM rag.documents d WHERE d.tenant_id = 'acme' AND d.document_id = $1",
            result.document_id,
        )
        stored = await conn.fetchval(
            "SELECT embedding FROM rag.chunks WHERE tenant_id = 'acme' AND document_id = $1"
            " AND ord = 3",
            result.document_id,
        )
    assert lex is True  # the per-statement sums add up to the document's lexeme total
    assert stored == pytest.approx(unit_vectors(11)[3], abs=1e-6)  # binary round trip


async def test_two_deliveries_of_one_write_at_once_store_one_copy(client, db):
    store = RagStore(db)
    collection = await store.collection("acme", await create_collection(client))
    results = await asyncio.gather(
        *(write(store, collection, "doc-d", pieces(6), unit_vectors(6)) for _ in range(3))
    )
    assert sorted(r.status for r in results) == ["created", "unchanged", "unchanged"]
    assert len({r.document_id for r in results}) == 1
    assert len(await chunk_rows(db, "acme", collection.collection_id)) == 6


async def test_a_redelivered_index_job_does_not_duplicate_chunks(env: WorkerEnv, client, db):
    """The same job delivered twice by JetStream (a redelivery racing the first delivery,
    then one after it finished): one document, each chunk once."""
    tenant = "acme"
    cid = await create_collection(client)
    text = "\n\n".join(f"Paragraph {i}: " + "the pump valve seal wears " * 30 for i in range(6))
    job_id = unique("job")
    stored = await put_stream(
        env.js, tenant, [text.encode()], max_bytes=1 << 20, name=f"parsed/{job_id}"
    )
    job = IndexJob(
        job_id=job_id,
        collection_id=cid,
        source_id="manual.txt",
        title="Manual",
        content_type="text/plain",
        text_object=stored.name,
    )
    store = RagStore(db)
    for n in range(2):  # two messages of one job: Nats-Msg-Id differs, as on redelivery
        await publish(env.js, INDEX_SUBJECT, job, ctx(tenant), msg_id=f"{job_id}:{n}")
    await asyncio.wait_for(consumed(env), 60)
    document = await store.document_for_job(tenant, job_id)
    assert document is not None
    rows = await chunk_rows(db, tenant, cid)
    assert len(rows) == document["chunk_count"] > 1
    assert {d for d, _ in rows} == {document["document_id"]}
    assert [o for _, o in rows] == list(range(len(rows)))
    # Delivered again after it finished (the parsed text is gone by now): still one copy.
    await publish(env.js, INDEX_SUBJECT, job, ctx(tenant), msg_id=f"{job_id}:late")
    await asyncio.wait_for(consumed(env), 60)
    assert await chunk_rows(db, tenant, cid) == rows


async def consumed(env: WorkerEnv) -> None:
    """Until RAG's index consumer has no message waiting or unacknowledged."""
    while True:
        info = await env.js.consumer_info("INGEST", "rag-index")
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.1)
