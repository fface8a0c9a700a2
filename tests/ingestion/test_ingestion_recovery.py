"""Durability: the ingestion and RAG workers killed mid-ingestion, and Postgres stopped
mid-ingestion — every job still ends indexed, each document exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.client import Client
from bus.errors import RetryableError
from bus.postgres import create_database
from bus.settings import Settings
from mesh.infra import NatsServer, PostgresServer
from mesh.runner import bus_env, serving
from schemas.ingestion import ListJobsResponse, SubmitResponse
from tests.fake_gateway import FakeGateway
from tests.processes import StartWorker, worker_processes
from tests.rag_support import create_collection, ctx

DOCS = 200


def documents(n: int, tag: str) -> list[dict[str, str]]:
    return [
        {
            "source_id": f"{tag}-{i}",
            "text": f"# Record {i}\n\nRecord {i} of batch {tag}: valve {i}.",
        }
        for i in range(n)
    ]


async def count_status(client: Client, tenant: str, collection_id: str, status: str) -> int:
    """Jobs of the collection in ``status``; -1 while the service cannot answer."""
    total, cursor = 0, None
    try:
        while True:
            page = await client.request(
                "ingestion.list_jobs.request",
                {"collection_id": collection_id, "status": status, "limit": 500}
                | ({"cursor": cursor} if cursor else {}),
                ctx(tenant, timeout=5),
                ListJobsResponse,
                idempotent=True,
            )
            total += len(page.jobs)
            cursor = page.next_cursor
            if not cursor:
                return total
    except RetryableError:
        return -1


async def wait_count(client, tenant, cid, status, at_least, timeout) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = await count_status(client, tenant, cid, status)
        if n >= at_least:
            return n
        if time.monotonic() > deadline:
            raise AssertionError(f"only {n} jobs {status} after {timeout}s, wanted {at_least}")
        await asyncio.sleep(0.1)


async def submit_all(client, tenant, cid, docs) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(docs), 50):
        out = await client.request(
            "ingestion.submit.request",
            {"collection_id": cid, "documents": docs[start : start + 50]},
            ctx(tenant),
            SubmitResponse,
        )
        ids += [j.job_id for j in out.jobs]
    return ids


async def assert_exactly_once(database_url: str, tenant: str, cid: str, n: int) -> None:
    db = await create_database(database_url)
    try:
        async with db.connection() as conn:
            rows = await conn.fetch(
                "SELECT d.source_id, d.chunk_count, count(c.chunk_id) AS chunks"
                " FROM rag.documents d LEFT JOIN rag.chunks c"
                "   ON c.tenant_id = d.tenant_id AND c.document_id = d.document_id"
                " WHERE d.tenant_id = $1 AND d.collection_id = $2"
                " GROUP BY d.source_id, d.chunk_count",
                tenant,
                cid,
            )
            jobs = await conn.fetch(
                "SELECT status, document_id FROM ingestion.jobs"
                " WHERE tenant_id = $1 AND collection_id = $2",
                tenant,
                cid,
            )
    finally:
        await db.close()
    assert len(rows) == n
    assert all(r["chunks"] == r["chunk_count"] == 1 for r in rows)
    assert len(jobs) == n and {j["status"] for j in jobs} == {"indexed"}
    assert len({j["document_id"] for j in jobs}) == n


# ---------------------------------------------------------------- kill -9 and restart


@pytest.fixture
def worker_process(settings: Settings, tmp_path: Path) -> Iterator[StartWorker]:
    with worker_processes(settings, tmp_path, "ingestion", "rag") as start:
        yield start


async def wait_serving(client: Client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.request("rag.list_collections.request", {}, ctx("probe", timeout=2))
            await client.request("ingestion.list_jobs.request", {}, ctx("probe", timeout=2))
            return
        except RetryableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_workers_killed_mid_ingestion_index_every_document_exactly_once(
    settings, client, fake_gateway, worker_process
):
    first = worker_process()
    await wait_serving(client)
    cid = await create_collection(client, "crashy")
    await submit_all(client, "crashy", cid, documents(DOCS, "k"))
    done = await wait_count(client, "crashy", cid, "indexed", 20, timeout=60)
    first.kill()  # SIGKILL: no draining, in-flight jobs stay unacknowledged
    first.wait(10)
    assert done < DOCS, "everything finished before the kill: the test proved nothing"
    worker_process()
    await wait_serving(client)
    await wait_count(client, "crashy", cid, "indexed", DOCS, timeout=120)
    assert await count_status(client, "crashy", cid, "failed") == 0
    await assert_exactly_once(settings.database_url, "crashy", cid, DOCS)


# ---------------------------------------------------------------- Postgres stopped


async def test_jobs_wait_while_postgres_is_down_and_complete_after(tmp_path):
    nats = NatsServer(tmp_path / "nats")
    pg = PostgresServer(tmp_path / "pg", durable=False)
    nats.start()
    pg.start()
    try:
        settings = Settings(nats_url=nats.url, database_url=pg.url)  # type: ignore[call-arg]
        async with bus_env(settings, "pg-outage") as env:
            gateway = FakeGateway()
            async with gateway.worker().serve(env.nc), serving(["ingestion", "rag"], env):
                client = Client(env.nc)
                cid = await create_collection(client, "outage")
                n = 60
                await submit_all(client, "outage", cid, documents(n, "p"))
                done = await wait_count(client, "outage", cid, "indexed", 5, timeout=60)
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(4)  # jobs are waiting on the database now
                await asyncio.to_thread(pg.start)
                await wait_count(client, "outage", cid, "indexed", n, timeout=120)
                assert done < n
                assert await count_status(client, "outage", cid, "failed") == 0
                await assert_exactly_once(pg.url, "outage", cid, n)
    finally:
        pg.stop()
        nats.stop()
