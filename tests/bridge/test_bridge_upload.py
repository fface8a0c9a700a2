"""``POST /api/v1/ingestion/upload`` on the real bridge, with the real ingestion and RAG
workers (and a fake gateway for embeddings): files streamed into the object store, jobs
submitted and indexed, limits answered 413 with nothing left behind, tenant from the token."""

from __future__ import annotations

import asyncio
import time

import pytest
from fpdf import FPDF

from bus.jetstream import UPLOADS_BUCKET
from bus.uploads import TENANT_HEADER, header
from gateway_bridge.app import create_app
from schemas.ingestion import UPLOAD_PATH
from tests.bridge_support import auth, bridge_settings, hs_token, http, serving
from tests.rag_support import create_collection, unique

pytestmark = pytest.mark.usefixtures("rag_mesh")

#: Small limits, so "too large" is cheap to build: a file may be larger than a JSON body.
BODY_LIMIT = 64 * 1024
UPLOAD_LIMIT = 256 * 1024

MARKDOWN = (
    b"# Travel policy\n\nBook economy class for flights under six hours.\n\n"
    + b"## Receipts\n\nKeep every receipt for the expense report.\n\n" * 1600
)  # ~100 KiB: over the bridge's general body limit, under the upload limit


def pdf_bytes(text: str) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


@pytest.fixture(scope="module")
async def bridge(settings):
    app = create_app(
        bridge_settings(settings, bridge_max_body_bytes=BODY_LIMIT, upload_max_bytes=UPLOAD_LIMIT)
    )
    async with serving(app) as url:
        yield url


async def wait_indexed(c, token: str, job_ids: list[str], timeout: float = 90.0) -> dict:
    jobs: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while len(jobs) < len(job_ids):
        for job_id in job_ids:
            r = await c.get(f"/api/v1/ingestion/jobs/{job_id}", headers=auth(token))
            assert r.status_code == 200, r.text
            if r.json()["status"] in ("indexed", "failed"):
                jobs[job_id] = r.json()
        assert time.monotonic() < deadline, f"jobs not finished: {jobs}"
        await asyncio.sleep(0.2)
    return jobs


async def tenant_objects(env, tenant: str) -> list:
    store = await env.js.object_store(UPLOADS_BUCKET)
    try:
        objects = await store.list()
    except Exception:  # nats-py raises NotFoundError for an empty bucket
        return []
    return [o for o in objects if header(o, TENANT_HEADER) == tenant and not o.deleted]


async def test_markdown_and_pdf_uploads_are_indexed(bridge, client, env):
    tenant = unique("up")
    token = hs_token(tenant=tenant)
    collection = await create_collection(client, tenant)
    pdf = pdf_bytes("Hydraulic press manual. Set the pressure to 180 bar before the first stroke.")
    files = [
        ("file", ("travel.md", MARKDOWN, "text/markdown")),
        ("file", ("press.pdf", pdf, "application/pdf")),
    ]
    async with http(bridge) as c:
        r = await c.post(
            UPLOAD_PATH,
            data={"collection_id": collection, "metadata": '{"team": "ops"}'},
            files=files,
            headers=auth(token),
        )
        assert r.status_code == 202, r.text
        refs = r.json()["jobs"]
        assert [j["source_id"] for j in refs] == ["travel.md", "press.pdf"]
        assert {j["status"] for j in refs} == {"queued"}
        jobs = await wait_indexed(c, token, [j["job_id"] for j in refs])
    by_name = {j["filename"]: j for j in jobs.values()}
    assert {name: j["status"] for name, j in by_name.items()} == {
        "travel.md": "indexed",
        "press.pdf": "indexed",
    }
    assert by_name["travel.md"]["size"] == len(MARKDOWN)
    assert by_name["press.pdf"]["content_type"] == "application/pdf"
    assert all(j["chunks"] for j in jobs.values())
    stored = {header(o, "Mesh-Filename") for o in await tenant_objects(env, tenant)}
    assert {"travel.md", "press.pdf"} <= stored  # the uploads stay, owned by the tenant


async def test_oversized_file_is_413_and_nothing_stays_in_the_object_store(bridge, client, env):
    tenant = unique("up-big")
    collection = await create_collection(client, tenant)
    files = [
        ("file", ("small.md", b"# Small\n\nfits.\n", "text/markdown")),
        ("file", ("big.md", b"x" * (UPLOAD_LIMIT + 1), "text/markdown")),
    ]
    async with http(bridge) as c:
        r = await c.post(
            UPLOAD_PATH,
            data={"collection_id": collection},
            files=files,
            headers=auth(hs_token(tenant=tenant)),
        )
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "payload_too_large"
    assert await tenant_objects(env, tenant) == []  # the small file stored first is gone


async def test_more_files_than_one_submit_takes_is_413(bridge, client, env):
    tenant = unique("up-many")
    collection = await create_collection(client, tenant)
    files = [("file", (f"f{i}.md", b"# note\n", "text/markdown")) for i in range(101)]
    async with http(bridge) as c:
        r = await c.post(
            UPLOAD_PATH,
            data={"collection_id": collection},
            files=files,
            headers=auth(hs_token(tenant=tenant)),
        )
    assert r.status_code == 413
    assert await tenant_objects(env, tenant) == []


async def test_unknown_collection_is_404_and_the_files_are_deleted(bridge, env):
    tenant = unique("up-404")
    async with http(bridge) as c:
        r = await c.post(
            UPLOAD_PATH,
            data={"collection_id": "col_missing"},
            files=[("file", ("a.md", b"# A\n\ntext\n", "text/markdown"))],
            headers=auth(hs_token(tenant=tenant)),
        )
    assert r.status_code == 404
    assert await tenant_objects(env, tenant) == []


async def test_a_tenant_form_field_is_ignored_the_token_decides(bridge, client):
    tenant, victim = unique("up-me"), unique("up-victim")
    collection = await create_collection(client, tenant)
    async with http(bridge) as c:
        r = await c.post(
            UPLOAD_PATH,
            data={"tenant_id": victim, "collection_id": collection},
            files=[("file", ("mine.md", b"# Mine\n\nowned by the token's tenant\n", None))],
            headers=auth(hs_token(tenant=tenant)),
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["jobs"][0]["job_id"]
        theirs = await c.get(
            f"/api/v1/ingestion/jobs/{job_id}", headers=auth(hs_token(tenant=victim))
        )
        assert theirs.status_code == 404
        jobs = await wait_indexed(c, hs_token(tenant=tenant), [job_id])
    assert jobs[job_id]["status"] == "indexed"


async def test_files_before_the_collection_id_are_refused(bridge):
    async with http(bridge) as c:
        r = await c.post(
            UPLOAD_PATH,
            files=[
                ("file", ("a.md", b"# A\n", "text/markdown")),
                ("collection_id", (None, b"col_x")),
            ],
            headers=auth(hs_token()),
        )
    assert r.status_code == 400
    assert "before the files" in r.json()["detail"]


async def test_upload_needs_a_token(bridge):
    async with http(bridge) as c:
        r = await c.post(UPLOAD_PATH, data={"collection_id": "c"}, files=[("file", b"x")])
    assert r.status_code == 401


async def test_the_general_body_limit_still_holds_on_other_routes(bridge):
    body = {"collection_id": "col_x", "documents": [{"text": "x" * (BODY_LIMIT + 1)}]}
    async with http(bridge) as c:
        r = await c.post("/api/v1/ingestion/documents", json=body, headers=auth(hs_token()))
    assert r.status_code == 413
