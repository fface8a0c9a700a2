"""Fixtures and helpers shared by the RAG and ingestion tests.

Import the fixtures into a test module (``from tests.rag_support import fake_gateway,
rag_mesh``) to run them for that module only: the ingestion and RAG workers own durable
JetStream consumers, and a module that runs its own copies (subprocesses, another
database) must not share the session's NATS with in-process ones.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from bus.client import Client
from bus.context import new_context
from bus.worker import WorkerEnv
from mesh.runner import serving
from schemas.context import Context
from schemas.ingestion import Job
from tests.fake_gateway import FakeGateway

TERMINAL = ("indexed", "failed")


def ctx(tenant: str = "acme", timeout: float = 30.0) -> Context:
    return new_context(tenant, user="tester", timeout=timeout)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def fake_gateway(env: WorkerEnv) -> AsyncIterator[FakeGateway]:
    gateway = FakeGateway()
    async with gateway.worker().serve(env.nc):
        yield gateway


@pytest.fixture(scope="module")
async def rag_mesh(
    env: WorkerEnv, fake_gateway: FakeGateway, cache_worker: None
) -> AsyncIterator[None]:
    async with serving(["ingestion", "rag"], env):
        yield


async def create_collection(
    client: Client, tenant: str = "acme", name: str | None = None, **kw: Any
) -> str:
    out = await client.request(
        "rag.create_collection.request", {"name": name or unique("col"), **kw}, ctx(tenant)
    )
    return str(out["collection_id"])


async def wait_jobs(
    client: Client, tenant: str, job_ids: Iterable[str], timeout: float = 60.0
) -> dict[str, Job]:
    """Poll until every job is indexed or failed; return them by id."""
    pending = set(job_ids)
    done: dict[str, Job] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for job_id in list(pending):
            job = await client.request(
                "ingestion.get_job.request", {"job_id": job_id}, ctx(tenant), Job, idempotent=True
            )
            if job.status in TERMINAL:
                done[job_id] = job
                pending.discard(job_id)
        if pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pending)} jobs not finished: {sorted(pending)[:5]}")
            await asyncio.sleep(0.2)
    return done
