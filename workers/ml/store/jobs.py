"""Training jobs in Postgres (``ml.jobs``): submit, attempts and leases, cancel, sweep.

Every query filters on ``tenant_id`` (the lease sweeper alone looks across tenants).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from bus.context import new_id
from bus.errors import InvalidRequest
from bus.postgres import Database
from bus.sql import row_of
from workers.ml.rows import JobKey, JobRow

#: Tries of one job before it is failed (JetStream ``max_deliver`` matches it).
MAX_ATTEMPTS = 3
#: Every column of a job but its inline rows, which only the training consumer reads.
_JOB = (
    "tenant_id, job_id, name, task, algorithm, spec, dataset_object, dataset_format,"
    " (dataset IS NOT NULL) AS has_dataset, status, attempts, error, error_code,"
    " error_details, version, metrics, heartbeat_at, created_at, started_at, finished_at"
)


def new_job_id() -> str:
    return "mlj_" + new_id()


def _cursor(ts: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(f"{ts.isoformat()}|{key}".encode()).decode()


def _uncursor(cursor: str) -> tuple[datetime, str]:
    try:
        ts, key = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(ts), key
    except Exception:
        raise InvalidRequest("invalid cursor") from None


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------ jobs

    async def create_job(
        self,
        tenant: str,
        job_id: str,
        *,
        name: str,
        task: str,
        algorithm: str,
        spec: dict[str, Any],
        dataset_object: str | None,
        dataset: bytes | None,
        dataset_format: str,
    ) -> JobRow:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO ml.jobs (tenant_id, job_id, name, task, algorithm, spec,"
                " dataset_object, dataset, dataset_format)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9) RETURNING " + _JOB,
                tenant,
                job_id,
                name,
                task,
                algorithm,
                spec,
                dataset_object,
                dataset,
                dataset_format,
            )
        return row_of(JobRow, row)

    async def get_job(self, tenant: str, job_id: str) -> JobRow | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT " + _JOB + " FROM ml.jobs WHERE tenant_id = $1 AND job_id = $2",
                tenant,
                job_id,
            )
        return row_of(JobRow, row) if row else None

    async def list_jobs(
        self, tenant: str, *, status: str | None, name: str | None, limit: int, cursor: str | None
    ) -> tuple[list[JobRow], str | None]:
        before_ts, before_id = _uncursor(cursor) if cursor else (None, "")
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT " + _JOB + " FROM ml.jobs WHERE tenant_id = $1"
                " AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR name = $3)"
                " AND ($4::timestamptz IS NULL OR (created_at, job_id) < ($4::timestamptz, $5))"
                " ORDER BY created_at DESC, job_id DESC LIMIT $6",
                tenant,
                status,
                name,
                before_ts,
                before_id,
                limit + 1,
            )
        items = rows[:limit]
        nxt = _cursor(items[-1]["created_at"], items[-1]["job_id"]) if len(rows) > limit else None
        return [row_of(JobRow, r) for r in items], nxt

    async def dataset(self, tenant: str, job_id: str) -> bytes | None:
        """A job's inline rows (msgpack), if it has them."""
        async with self.db.connection() as conn:
            value = await conn.fetchval(
                "SELECT dataset FROM ml.jobs WHERE tenant_id = $1 AND job_id = $2",
                tenant,
                job_id,
            )
        return bytes(value) if value is not None else None

    async def start_attempt(self, tenant: str, job_id: str) -> JobRow | None:
        """Enter ``running`` for one more attempt; ``None`` if the job is finished."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE ml.jobs SET status = 'running', attempts = attempts + 1,"
                " started_at = coalesce(started_at, now()), heartbeat_at = now()"
                " WHERE tenant_id = $1 AND job_id = $2 AND status IN ('queued', 'running')"
                " RETURNING " + _JOB,
                tenant,
                job_id,
            )
        return row_of(JobRow, row) if row else None

    async def heartbeat(self, tenant: str, job_id: str, attempt: int) -> str | None:
        """Renew the attempt's lease; the job's status (``None`` if it is gone)."""
        async with self.db.connection() as conn:
            return await conn.fetchval(
                "UPDATE ml.jobs SET heartbeat_at = CASE WHEN status = 'running'"
                " AND attempts = $3 THEN now() ELSE heartbeat_at END"
                " WHERE tenant_id = $1 AND job_id = $2 RETURNING status",
                tenant,
                job_id,
                attempt,
            )

    async def finish_failed(
        self,
        tenant: str,
        job_id: str,
        code: str,
        message: str,
        details: Any = None,
        *,
        attempt: int | None = None,
    ) -> bool:
        """Fail a job that is not finished yet (of this attempt, when given)."""
        async with self.db.connection() as conn:
            row = await conn.fetchval(
                "UPDATE ml.jobs SET status = 'failed', error = $3, error_code = $4, dataset = NULL,"
                " error_details = $5::jsonb, finished_at = now()"
                " WHERE tenant_id = $1 AND job_id = $2 AND status IN ('queued', 'running')"
                " AND ($6::int IS NULL OR attempts = $6) RETURNING 1",
                tenant,
                job_id,
                f"{code}: {message}",
                code,
                details,
                attempt,
            )
        return row is not None

    async def cancel_job(self, tenant: str, job_id: str) -> JobRow | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE ml.jobs SET status = 'cancelled', finished_at = now(), dataset = NULL"
                " WHERE tenant_id = $1 AND job_id = $2 AND status IN ('queued', 'running')"
                " RETURNING " + _JOB,
                tenant,
                job_id,
            )
            if row is None:
                row = await conn.fetchrow(
                    "SELECT " + _JOB + " FROM ml.jobs WHERE tenant_id = $1 AND job_id = $2",
                    tenant,
                    job_id,
                )
        return row_of(JobRow, row) if row else None

    async def lost_jobs(
        self, stale_s: float, max_attempts: int, abandoned_s: float
    ) -> list[JobKey]:
        """Fail running jobs whose lease expired on their last attempt, or long ago on
        any attempt (JetStream would have redelivered them by then). All tenants."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "UPDATE ml.jobs SET status = 'failed', error_code = 'unavailable', dataset = NULL,"
                " error = 'unavailable: the training worker stopped during attempt '"
                "   || attempts || ' of ' || $2 || ' and the job was not retried',"
                " finished_at = now()"
                " WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $1)"
                " AND (attempts >= $2 OR heartbeat_at < now() - make_interval(secs => $3))"
                " RETURNING tenant_id, job_id",
                stale_s,
                max_attempts,
                abandoned_s,
            )
        return [row_of(JobKey, r) for r in rows]

    # ------------------------------------------------------------ registry
