"""Issue 10, item 8: the uploads bucket has a size limit, each tenant a quota of pending
documents and bytes, and the files of failed jobs are deleted."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.js import api

from bus.errors import NotFound, PayloadTooLarge, RateLimited
from bus.jetstream import DEFAULT_UPLOADS_BUCKET_MAX_BYTES, UPLOADS_BUCKET
from bus.postgres import create_database
from bus.uploads import object_info, put_stream
from bus.worker import WorkerEnv
from schemas.ingestion import SubmitRequest, SubmitResponse
from tests.rag_support import create_collection, ctx, wait_jobs
from workers.ingestion.service import Ingestion
from workers.ingestion.settings import IngestionSettings
from workers.ingestion.store import JobStore, NewJob, Quota, new_job_id


async def test_the_uploads_bucket_has_a_size_limit(env: WorkerEnv):
    info = await env.js.stream_info(f"OBJ_{UPLOADS_BUCKET}")
    assert info.config.max_bytes == DEFAULT_UPLOADS_BUCKET_MAX_BYTES
    assert info.config.discard == api.DiscardPolicy.NEW


async def test_a_full_bucket_refuses_the_upload_and_keeps_nothing(env: WorkerEnv):
    bucket = f"tiny{uuid.uuid4().hex[:8]}"
    await env.js.create_object_store(bucket, storage=api.StorageType.FILE, max_bytes=1024**2)
    try:
        with pytest.raises(PayloadTooLarge, match="upload store is full"):
            await put_stream(env.js, "acme", [b"x" * 3 * 1024**2], max_bytes=10**9, bucket=bucket)
        info = await env.js.stream_info(f"OBJ_{bucket}")
        assert info.state.bytes == 0
    finally:
        await env.js.delete_object_store(bucket)


@pytest.fixture
async def store(env: WorkerEnv) -> AsyncIterator[JobStore]:
    assert env.settings.database_url
    db = await create_database(env.settings.database_url)
    try:
        yield JobStore(db)
    finally:
        await db.close()


def _jobs(n: int, size: int) -> list[NewJob]:
    return [
        NewJob(new_job_id(), "col", f"s{i}", None, {}, None, None, f"up/{uuid.uuid4().hex}", size)
        for i in range(n)
    ]


async def test_a_tenant_over_its_pending_quota_is_rate_limited(store: JobStore, rag_mesh: None):
    tenant = f"quota-{uuid.uuid4().hex[:8]}"
    quota = Quota(max_documents=3, max_bytes=1000)
    rows = await store.create(tenant, _jobs(2, 100), quota)
    try:
        with pytest.raises(RateLimited, match="in progress") as err:
            await store.create(tenant, _jobs(2, 100), quota)  # 4 documents
        assert err.value.retry_after and err.value.retry_after > 0
        with pytest.raises(RateLimited):
            await store.create(tenant, _jobs(1, 900), quota)  # 1100 bytes
        with pytest.raises(PayloadTooLarge, match="at most 3 documents"):
            await store.create(tenant, _jobs(4, 1), quota)  # can never fit
        # Another tenant has its own quota.
        other = await store.create(f"{tenant}-b", _jobs(3, 100), quota)
        assert len(other) == 3
        # Finished jobs free the quota.
        for r in rows:
            await store.fail(tenant, r["job_id"], "test")
        assert len(await store.create(tenant, _jobs(3, 100), quota)) == 3
    finally:
        async with store.db.connection() as conn:
            await conn.execute(
                "DELETE FROM ingestion.jobs WHERE tenant_id = ANY($1::text[])",
                [tenant, f"{tenant}-b"],
            )


async def test_submit_answers_rate_limited_over_the_quota(env: WorkerEnv, rag_mesh: None):
    settings = IngestionSettings(ingest_tenant_max_pending_documents=2)
    tenant = f"quota-{uuid.uuid4().hex[:8]}"
    cid = await create_collection(env.client, tenant)
    assert env.settings.database_url
    db = await create_database(env.settings.database_url)
    try:
        ing = Ingestion(db, env.js, env.client, settings)
        too_many = SubmitRequest.model_validate(
            {"collection_id": cid, "documents": [{"text": f"doc {i}"} for i in range(3)]}
        )
        with pytest.raises(PayloadTooLarge, match="at most 2 documents"):
            await ing.submit(too_many, ctx(tenant))
    finally:
        await db.close()


async def test_the_files_of_a_failed_job_are_deleted(env: WorkerEnv, rag_mesh: None):
    tenant = f"clean-{uuid.uuid4().hex[:8]}"
    cid = await create_collection(env.client, tenant)
    stored = await put_stream(
        env.js,
        tenant,
        [b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 4096],
        max_bytes=10**6,
        filename="tool.bin",
    )
    out = await env.client.request(
        "ingestion.submit.request",
        {"collection_id": cid, "documents": [{"object": stored.ref()}]},
        ctx(tenant),
        SubmitResponse,
    )
    job = (await wait_jobs(env.client, tenant, [out.jobs[0].job_id]))[out.jobs[0].job_id]
    assert job.status == "failed" and "binary" in (job.error or "")
    deadline = time.monotonic() + 20
    while True:
        try:
            await object_info(env.js, stored.name, tenant)
        except NotFound:
            break
        assert time.monotonic() < deadline, "the failed job's original is still stored"
        await asyncio.sleep(0.2)
