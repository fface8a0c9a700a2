"""The training worker killed mid-job (SIGKILL, the production shape ``mesh worker ml``):
its training process dies with it, JetStream redelivers the job and the next worker
trains it again (attempt 2); a job whose lease expired on its last attempt is failed with
the reason — never left ``running``."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bus.client import Client
from bus.errors import RetryableError
from bus.postgres import create_database
from bus.settings import Settings
from schemas import ml
from tests.ml_support import ctx, iris_rows, train, unique, wait_job
from tests.processes import StartWorker, worker_processes
from workers.ml.service import MLService
from workers.ml.store import MAX_ATTEMPTS


@pytest.fixture
def worker_process(settings: Settings, tmp_path: Path) -> Iterator[StartWorker]:
    with worker_processes(settings, tmp_path, "ml") as start:
        yield start


async def wait_serving(client: Client, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.call(ml.LIST_JOBS, {}, ctx("probe", timeout=2))
            return
        except RetryableError:
            assert time.monotonic() < deadline, "the ML worker did not come up"
            await asyncio.sleep(0.2)


def trainers(worker: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(worker.pid).children(recursive=True)
        if "workers.ml.trainer" in " ".join(p.cmdline())
    ]


@pytest.mark.timeout(300)
async def test_a_worker_killed_mid_training_is_retried_and_the_job_succeeds(
    settings: Settings, client: Client, worker_process
) -> None:
    first = worker_process()
    await wait_serving(client)
    tenant = unique("crash")
    job_id = await train(
        client,
        tenant,
        name="forest",
        task="classification",
        algorithm="random_forest",
        params={"n_estimators": 300, "max_features": None},
        target="species",
        dataset={"rows": iris_rows() * 40},
    )
    await wait_job(client, tenant, job_id, until=("running",))
    deadline = time.monotonic() + 30
    while not (children := trainers(first)):
        assert time.monotonic() < deadline, "no training process"
        await asyncio.sleep(0.05)
    first.kill()  # SIGKILL: no draining, the message stays unacknowledged
    first.wait(10)
    # The training process dies with its worker (PR_SET_PDEATHSIG).
    gone, alive = await asyncio.to_thread(psutil.wait_procs, children, 10)
    assert not alive
    db = await create_database(settings.database_url or "")
    try:
        async with db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT status, attempts FROM ml.jobs WHERE tenant_id = $1 AND job_id = $2",
                tenant,
                job_id,
            )
    finally:
        await db.close()
    assert (row["status"], row["attempts"]) == ("running", 1)  # left behind by the kill

    worker_process()
    await wait_serving(client)
    job = await wait_job(client, tenant, job_id, timeout=200)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2 and job.version == 1


async def test_a_job_whose_lease_expired_on_its_last_attempt_is_failed_with_the_reason(
    settings: Settings, env, client: Client
) -> None:
    tenant = unique("lease")
    db = await create_database(settings.database_url or "")
    try:
        async with db.connection() as conn:
            await conn.execute(
                "INSERT INTO ml.jobs (tenant_id, job_id, name, task, algorithm, spec,"
                " dataset_object, dataset_format, status, attempts, heartbeat_at)"
                " VALUES ($1, 'mlj_lost', 'm', 'classification', 'ridge', $2::jsonb, 'x',"
                " 'csv', 'running', $3, now() - interval '2 minutes')",
                tenant,
                {},
                MAX_ATTEMPTS,
            )
        swept = await MLService(db, env.js).sweep_once()
        assert swept >= 1
        async with db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT status, error_code, error FROM ml.jobs WHERE tenant_id = $1", tenant
            )
    finally:
        await db.close()
    assert row["status"] == "failed" and row["error_code"] == "unavailable"
    assert f"attempt {MAX_ATTEMPTS} of {MAX_ATTEMPTS}" in row["error"]
