"""Multi-modal ingestion end to end over real NATS/JetStream, Postgres and the object
store: images, scanned PDFs, spreadsheets and decks become ``indexed``, and ``rag.query``
cites where the answer is (page, sheet and row, slide, image text); bombs fail with a
reason while the worker keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bus.uploads import put_stream
from bus.worker import WorkerEnv
from mesh.runner import serving
from schemas.ingestion import SubmitResponse
from schemas.rag import DocumentDetail, QueryResponse
from tests.fake_gateway import FakeGateway
from tests.media import (
    gif_many_frames,
    image_bytes,
    png_header_bomb,
    pptx_bytes,
    scanned_pdf,
    xlsx_bytes,
    xlsx_zip_bomb,
)
from tests.rag_support import create_collection, ctx, wait_jobs


@pytest.fixture(scope="module", autouse=True)
async def mesh(
    env: WorkerEnv, fake_gateway: FakeGateway, cache_worker: None
) -> AsyncIterator[None]:
    async with serving(["ingestion", "rag"], env):
        yield


FILES = {
    "receipt.png": image_bytes(["Lighthouse Cafe receipt", "Two espressos cost seven euros"]),
    "timetable.pdf": scanned_pdf(
        ["The ferry to Skellig leaves at noon"],
        "The maritime museum is closed on Mondays.",
        ["Harbour parking costs four euros per hour"],
    ),
    "stock.xlsx": xlsx_bytes(
        {
            "Tools": [["Item", "Shelf"], ["hammer", "A1"], ["wrench", "A2"]],
            "Garage": [
                ["Item", "Warehouse", "Count"],
                ["tyre", "Lyon", 12],
                ["battery", "Lyon", 3],
                ["flux capacitor", "Reno", 1],
            ],
        }
    ),
    "plan.pptx": pptx_bytes(
        [
            ("Roadmap", "The mesh ships in March.", "Thank the pilot customers."),
            ("Risks", "The harbour crane contract is the main risk.", None),
        ]
    ),
}


async def upload(env: WorkerEnv, tenant: str, name: str, data: bytes) -> dict:
    stored = await put_stream(env.js, tenant, [data], max_bytes=1 << 24, filename=name)
    return stored.ref()


async def submit(env, client, tenant: str, cid: str, files: dict[str, bytes]) -> dict[str, str]:
    refs = [{"object": await upload(env, tenant, n, d)} for n, d in files.items()]
    out = await client.request(
        "ingestion.submit.request",
        {"collection_id": cid, "documents": refs},
        ctx(tenant),
        SubmitResponse,
    )
    return {j.source_id: j.job_id for j in out.jobs}


async def ask(client, cid: str, question: str) -> QueryResponse:
    return await client.request(
        "rag.query.request",
        {"collection_ids": [cid], "question": question, "top_k": 3, "use_cache": False},
        ctx(),
        QueryResponse,
    )


async def test_images_scans_sheets_and_decks_are_indexed_and_cited_where_they_say(
    env, client, fake_gateway
):
    cid = await create_collection(client)
    jobs = await wait_jobs(
        client, "acme", (await submit(env, client, "acme", cid, FILES)).values(), timeout=180
    )
    by_source = {j.source_id: j for j in jobs.values()}
    assert {s: j.status for s, j in by_source.items()} == dict.fromkeys(FILES, "indexed"), [
        j.error for j in jobs.values()
    ]
    assert by_source["receipt.png"].content_type == "image/png"
    assert by_source["stock.xlsx"].content_type.endswith("spreadsheetml.sheet")

    for question, source, label, fact in [
        ("How much do two espressos cost?", "receipt.png", "image text", "seven euros"),
        ("When does the ferry to Skellig leave?", "timetable.pdf", "page 1, image text", "noon"),
        ("Which day is the maritime museum closed?", "timetable.pdf", "page 2", "Mondays"),
        ("What does harbour parking cost per hour?", "timetable.pdf", "page 3, image text", "four"),
        ("What is the main risk of the harbour crane contract?", "plan.pptx", "slide 2", "crane"),
        ("When does the mesh ship?", "plan.pptx", "slide 1", "March"),
    ]:
        answer = await ask(client, cid, question)
        top = answer.citations[0]
        assert (top.source_id, top.location and top.location.label) == (source, label), question
        assert fact in top.quote, (question, top.quote)
        # The model is shown where each passage comes from, to cite it in its own words.
        stem = source.rsplit(".", 1)[0]  # the title ingestion gives an upload
        assert f"[1] {stem}, {label}\n" in fake_gateway.prompts[-1]

    answer = await ask(client, cid, "Which warehouse holds the flux capacitor?")
    top = answer.citations[0]
    assert top.source_id == "stock.xlsx" and top.location and top.location.sheet == "Garage"
    assert top.location.label == "sheet 'Garage' row 4"
    assert "Reno" in top.quote or "flux capacitor" in top.quote

    detail = await client.request(
        "rag.get_document.request",
        {"document_id": by_source["stock.xlsx"].document_id},
        ctx(),
        DocumentDetail,
    )
    assert {c.section for c in detail.chunks} == {"Tools", "Garage"}
    assert all(c.location and c.location.sheet == c.section for c in detail.chunks)


async def test_reindexing_keeps_the_locations_and_resubmitting_changes_nothing(
    env, client, fake_gateway
):
    cid = await create_collection(client)
    deck = {"plan.pptx": FILES["plan.pptx"]}
    [job] = (
        await wait_jobs(client, "acme", (await submit(env, client, "acme", cid, deck)).values())
    ).values()
    embedded = fake_gateway.embedded_texts
    [again] = (
        await wait_jobs(client, "acme", (await submit(env, client, "acme", cid, deck)).values())
    ).values()
    assert again.status == "indexed" and again.document_id == job.document_id
    assert fake_gateway.embedded_texts == embedded
    await client.request("rag.reindex_document.request", {"document_id": job.document_id}, ctx())
    detail = await client.request(
        "rag.get_document.request", {"document_id": job.document_id}, ctx(), DocumentDetail
    )
    assert [c.location.label for c in detail.chunks if c.location] == [
        "slide 1",
        "slide 1, notes",
        "slide 2",
    ]


async def test_image_gif_and_zip_bombs_fail_with_reasons_and_the_worker_keeps_serving(env, client):
    cid = await create_collection(client)
    bombs = {
        "huge.png": (png_header_bomb(50_000, 50_000), "decompression bomb"),
        "frames.gif": (gif_many_frames(10_000), "more than 1000 frames"),
        "bomb.xlsx": (xlsx_zip_bomb(), "zip bomb"),
    }
    ids = await submit(env, client, "acme", cid, {n: d for n, (d, _) in bombs.items()})
    jobs = await wait_jobs(client, "acme", ids.values(), timeout=120)
    for name, (_, reason) in bombs.items():
        job = jobs[ids[name]]
        assert job.status == "failed" and job.error and reason in job.error, (name, job.error)
        assert job.error.startswith("invalid_request: ") and job.document_id is None
    after = await submit(env, client, "acme", cid, {"after.png": FILES["receipt.png"]})
    job = (await wait_jobs(client, "acme", after.values(), timeout=120))[after["after.png"]]
    assert job.status == "indexed"
