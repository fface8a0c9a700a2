"""Data Ingestion end to end over real NATS/JetStream, Postgres and the object store:
upload (bus.uploads, as the bridge does) → ingestion.submit → parse consumer → RAG's index
consumer → job indexed → rag.query cites the file."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import AsyncIterator

import docx
import pypdf
import pytest
from fpdf import FPDF

from bus.errors import NotFound, PayloadTooLarge
from bus.postgres import create_database
from bus.uploads import object_info, put_stream
from bus.worker import WorkerEnv
from mesh.runner import serving
from schemas.ingestion import Job, ListJobsResponse, SubmitResponse
from schemas.rag import QueryResponse
from tests.fake_gateway import FakeGateway
from tests.rag_support import create_collection, ctx, unique, wait_jobs
from workers.ingestion.parsing import MIME
from workers.ingestion.service import Ingestion
from workers.ingestion.service import lifespan as ingestion_lifespan
from workers.ingestion.settings import IngestionSettings

#: This module's workers refuse files over 1 MiB, so "oversized" stays cheap to build.
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def small_limits() -> IngestionSettings:
    return IngestionSettings(upload_max_bytes=LIMIT)


@pytest.fixture(scope="module", autouse=True)
async def mesh(
    env: WorkerEnv,
    small_limits: IngestionSettings,
    fake_gateway: FakeGateway,
    cache_worker: None,
) -> AsyncIterator[None]:
    async with (
        ingestion_lifespan(env, small_limits) as worker,
        worker.serve(env.nc),
        serving(["rag"], env),
    ):
        yield


# ---------------------------------------------------------------- files


def pdf_bytes(*pages: str) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def encrypted_pdf() -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(pdf_bytes("Top secret."))))
    writer.encrypt("hunter2", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx_bytes() -> bytes:
    document = docx.Document()
    document.add_heading("Warranty policy", 1)
    document.add_paragraph("Every espresso machine carries a warranty of 24 months.")
    document.add_heading("Claims", 2)
    document.add_paragraph("Send warranty claims with the receipt to the service desk.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_bomb() -> bytes:
    """A ZIP named .docx whose document part expands ~1000-fold to 30 MiB."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        with zf.open("word/document.xml", "w") as part:
            block = b"\0" * (1024 * 1024)
            for _ in range(30):
                part.write(block)
    return out.getvalue()


GOOD = {
    "manual.pdf": (
        pdf_bytes(
            "Hydraulic press manual. Set the press pressure to 180 bar before the first stroke.",
            "Clean the press platen with a dry cloth after each shift.",
        ),
        "pdf",
    ),
    "warranty.docx": (docx_bytes(), "docx"),
    "hours.html": (
        b"<html><head><title>Office hours</title><script>var x = 1;</script></head><body>"
        b"<h1>Office hours</h1><p>The front office opens at 8 am and closes at 5 pm on "
        b"weekdays.</p></body></html>",
        "html",
    ),
    "onboarding.md": (
        b"# Onboarding\n\nNew staff receive a badge and a laptop on their first day.\n\n"
        b"## Parking\n\nVisitor parking is behind building C.\n",
        "md",
    ),
}
PDF = GOOD["manual.pdf"][0]
BAD = {
    "empty.txt": (b"", "empty"),
    "truncated.pdf": (PDF[: len(PDF) // 2], "corrupt or truncated"),
    "locked.pdf": (encrypted_pdf(), "encrypted"),
    "bomb.docx": (zip_bomb(), "zip bomb"),
    "notes.txt": (b"\x7fELF\x02\x01\x01\x00" + os.urandom(4096), "binary content"),
    "huge.md": (b"# Big\n\n" + b"word " * (LIMIT // 5 + 10), "limit"),
}


async def upload(env: WorkerEnv, tenant: str, name: str, data: bytes, piece: int = 64 * 1024):
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(data), piece):
            yield data[i : i + piece]

    # The bridge passes its own limit; the oversized file is stored to reach the parser.
    stored = await put_stream(env.js, tenant, pieces(), max_bytes=64 * LIMIT, filename=name)
    return stored.ref()


async def submit(client, tenant, collection_id, documents) -> SubmitResponse:
    return await client.request(
        "ingestion.submit.request",
        {"collection_id": collection_id, "documents": documents},
        ctx(tenant),
        SubmitResponse,
    )


# ---------------------------------------------------------------- tests


async def test_bad_files_fail_with_a_reason_while_good_files_in_the_batch_index(env, client):
    cid = await create_collection(client)
    files = {name: data for name, (data, _) in {**GOOD, **BAD}.items()}
    refs = [{"object": await upload(env, "acme", n, d)} for n, d in files.items()]
    out = await submit(client, "acme", cid, refs)
    by_source = {j.source_id: j.job_id for j in out.jobs}
    assert set(by_source) == set(files) and all(j.status == "queued" for j in out.jobs)
    jobs = await wait_jobs(client, "acme", by_source.values(), timeout=90)
    for name, (_, kind) in GOOD.items():
        job = jobs[by_source[name]]
        assert job.status == "indexed", (name, job.error)
        assert job.document_id and job.chunks and job.chunks >= 1
        assert job.content_type == MIME[kind]
        assert {"queued", "parsing", "chunking", "embedding", "indexed"} <= set(job.timings)
    for name, (_, reason) in BAD.items():
        job = jobs[by_source[name]]
        assert job.status == "failed", name
        assert job.error and reason in job.error, (name, job.error)
        assert job.document_id is None


async def test_rag_query_cites_the_uploaded_files(env, client):
    cid = await create_collection(client)
    refs = [{"object": await upload(env, "acme", n, d)} for n, (d, _) in GOOD.items()]
    out = await submit(client, "acme", cid, refs)
    await wait_jobs(client, "acme", [j.job_id for j in out.jobs])
    for question, source, fact in [
        ("What pressure should the hydraulic press be set to?", "manual.pdf", "180 bar"),
        ("How long is the espresso machine warranty?", "warranty.docx", "24 months"),
        ("When does the front office open?", "hours.html", "8 am"),
        ("What do new staff receive on their first day?", "onboarding.md", "badge"),
    ]:
        answer = await client.request(
            "rag.query.request",
            {"collection_ids": [cid], "question": question, "top_k": 3},
            ctx(),
            QueryResponse,
        )
        assert answer.citations[0].source_id == source, question
        assert fact in answer.citations[0].quote


async def test_large_file_streams_through_the_object_store_and_indexes(env, client):
    cid = await create_collection(client)
    text = "".join(
        f"## Section {i}\n\nParagraph {i} about turbine blade {i}.\n\n" for i in range(4000)
    )
    ref = await upload(env, "acme", "turbines.md", text.encode(), piece=7000)
    assert ref["size"] == len(text.encode()) and ref["size"] > 128 * 1024
    out = await submit(client, "acme", cid, [{"object": ref, "metadata": {"team": "blades"}}])
    job = (await wait_jobs(client, "acme", [out.jobs[0].job_id]))[out.jobs[0].job_id]
    assert job.status == "indexed" and job.chunks and job.chunks >= 100
    assert job.size == ref["size"] and job.content_type == "text/markdown"
    found = await client.request(
        "rag.search.request",
        {"collection_ids": [cid], "query": "turbine blade 3999", "filters": {"team": "blades"}},
        ctx(),
    )
    assert "turbine blade 3999" in found["results"][0]["text"]


async def test_inline_text_and_json_documents_are_ingested(client):
    cid = await create_collection(client)
    out = await submit(
        client,
        "acme",
        cid,
        [
            {"text": "# Menu\n\nFriday lunch is fish soup.", "content_type": "text/markdown"},
            {
                "data": {"product": "kettle", "price_eur": 39, "colour": "teal"},
                "source_id": "kettle",
            },
        ],
    )
    jobs = await wait_jobs(client, "acme", [j.job_id for j in out.jobs])
    assert all(j.status == "indexed" for j in jobs.values())
    found = await client.request(
        "rag.search.request",
        {"collection_ids": [cid], "query": "teal kettle price", "mode": "keyword"},
        ctx(),
    )
    top = found["results"][0]
    assert top["source_id"] == "kettle" and "price_eur: 39" in top["text"]


async def test_resubmitting_the_same_file_changes_nothing(env, client, fake_gateway):
    cid = await create_collection(client)
    data = GOOD["onboarding.md"][0]
    first = await submit(client, "acme", cid, [{"object": await upload(env, "acme", "o.md", data)}])
    job1 = (await wait_jobs(client, "acme", [first.jobs[0].job_id]))[first.jobs[0].job_id]
    embedded = fake_gateway.embedded_texts
    second = await submit(
        client, "acme", cid, [{"object": await upload(env, "acme", "o.md", data)}]
    )
    job2 = (await wait_jobs(client, "acme", [second.jobs[0].job_id]))[second.jobs[0].job_id]
    assert job2.status == "indexed" and job2.document_id == job1.document_id
    assert fake_gateway.embedded_texts == embedded


async def test_deleting_the_document_deletes_the_uploaded_file(env, client):
    cid = await create_collection(client)
    ref = await upload(env, "acme", "gone.md", b"# Gone\n\nThis file will be deleted.")
    out = await submit(client, "acme", cid, [{"object": ref}])
    job = (await wait_jobs(client, "acme", [out.jobs[0].job_id]))[out.jobs[0].job_id]
    await object_info(env.js, ref["name"], "acme")  # still there while indexed
    await client.request("rag.delete_document.request", {"document_id": job.document_id}, ctx())
    with pytest.raises(NotFound):
        await object_info(env.js, ref["name"], "acme")


async def test_submit_refuses_unknown_collections_and_foreign_files(env, client):
    cid = await create_collection(client, "acme")
    with pytest.raises(NotFound):
        await submit(client, "acme", "col_nope", [{"text": "hello"}])
    with pytest.raises(NotFound):
        await submit(client, "globex", cid, [{"text": "hello"}])
    theirs = await upload(env, "acme", "a.md", b"# A\n\nacme only")
    other = await create_collection(client, "globex")
    with pytest.raises(NotFound):
        await submit(client, "globex", other, [{"object": theirs}])


async def test_inline_text_over_the_limit_is_payload_too_large(client):
    cid = await create_collection(client)
    with pytest.raises(PayloadTooLarge):
        await submit(client, "acme", cid, [{"text": "x" * (LIMIT + 1)}])


async def test_jobs_list_filters_and_pages(client):
    cid = await create_collection(client, "lister")
    out = await submit(
        client,
        "lister",
        cid,
        [{"text": f"# Note {i}\n\nNote number {i}."} for i in range(5)] + [{"text": "   "}],
    )
    await wait_jobs(client, "lister", [j.job_id for j in out.jobs])
    seen: list[str] = []
    cursor = None
    while True:
        page = await client.request(
            "ingestion.list_jobs.request",
            {"collection_id": cid, "limit": 2, **({"cursor": cursor} if cursor else {})},
            ctx("lister"),
            ListJobsResponse,
        )
        seen += [j.job_id for j in page.jobs]
        cursor = page.next_cursor
        if not cursor:
            break
    assert sorted(seen) == sorted(j.job_id for j in out.jobs) and len(seen) == len(set(seen))
    failed = await client.request(
        "ingestion.list_jobs.request",
        {"collection_id": cid, "status": "failed"},
        ctx("lister"),
        ListJobsResponse,
    )
    assert [j.error for j in failed.jobs] == [
        "invalid_request: no text could be extracted: no text"
    ]
    other = await client.request(
        "ingestion.list_jobs.request", {}, ctx(unique("t")), ListJobsResponse
    )
    assert other.jobs == []


async def test_get_job_of_another_tenant_is_not_found(client):
    cid = await create_collection(client)
    out = await submit(client, "acme", cid, [{"text": "private"}])
    with pytest.raises(NotFound):
        await client.request(
            "ingestion.get_job.request", {"job_id": out.jobs[0].job_id}, ctx("globex"), Job
        )


async def test_sweeper_publishes_jobs_whose_publish_never_happened(env, small_limits, client):
    """The outbox: a recorded job whose JetStream publish was lost is published later."""
    cid = await create_collection(client)
    db = await create_database(env.settings.database_url)
    try:
        ingestion = Ingestion(db, env.js, env.client, small_limits)
        stored = await put_stream(
            env.js,
            "acme",
            [b"# Lost\n\nA job that was never published."],
            max_bytes=LIMIT,
            filename="lost.md",
        )
        async with db.connection() as conn:
            await conn.execute(
                "INSERT INTO ingestion.jobs (tenant_id, job_id, collection_id, source_id,"
                " filename, object_name, size, created_at) VALUES ('acme', $1, $2, 'lost.md',"
                " 'lost.md', $3, $4, now() - interval '1 minute')",
                "job_lost" + unique("x").replace("-", ""),
                cid,
                stored.name,
                stored.size,
            )
            job_id = await conn.fetchval(
                "SELECT job_id FROM ingestion.jobs WHERE object_name = $1", stored.name
            )
        assert await ingestion.sweep_once() >= 1
        job = (await wait_jobs(client, "acme", [job_id]))[job_id]
        assert job.status == "indexed"
        assert json.loads(json.dumps(job.timings, default=str))
    finally:
        await db.close()
