"""Ingestion jobs in Postgres (schema ``ingestion``), every statement tenant-scoped.

Stage changes only move forward (``queued → parsing → chunking → embedding → indexed``),
``failed`` and ``indexed`` are final, and each stage's first entry time is kept: so events
that arrive twice or out of order (redeliveries, concurrent consumers) change nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bus.context import new_id
from bus.errors import PayloadTooLarge, RateLimited
from bus.postgres import Database
from bus.sql import cursor_time, decode_cursor, encode_cursor
from schemas.ingestion import STAGES, Job


def new_job_id() -> str:
    return new_id("job")


@dataclass(frozen=True)
class NewJob:
    job_id: str
    collection_id: str
    source_id: str
    title: str | None
    metadata: dict[str, Any]
    filename: str | None
    declared_type: str | None
    object_name: str
    size: int | None


def to_job(r: asyncpg.Record) -> Job:
    return Job(
        job_id=r["job_id"],
        collection_id=r["collection_id"],
        source_id=r["source_id"],
        filename=r["filename"],
        content_type=r["content_type"],
        size=r["size"],
        status=r["status"],
        attempts=r["attempts"],
        error=r["error"],
        document_id=r["document_id"],
        chunks=r["chunks"],
        timings=r["timings"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def _uncursor(cursor: str) -> tuple[datetime, str]:
    ts, job_id = decode_cursor(cursor, 2)
    return cursor_time(ts), str(job_id)


_STAGES = list(STAGES)
_TERMINAL = "('indexed', 'failed')"
#: How long a tenant over its pending quota is told to wait before trying again.
QUOTA_RETRY_AFTER_S = 30


@dataclass(frozen=True)
class Quota:
    """What one tenant may have queued or in progress at once (not yet indexed or failed)."""

    max_documents: int
    max_bytes: int


async def _check_quota(
    conn: asyncpg.Connection, tenant: str, jobs: list[NewJob], quota: Quota
) -> None:
    """Refuse a submit that would take the tenant past its pending quota.

    Under a per-tenant transaction lock, so two concurrent submits cannot both pass. A
    batch larger than the whole quota can never pass: ``payload_too_large``; one that fits
    once earlier jobs finish: ``rate_limited`` with a retry-after.
    """
    size = sum(j.size or 0 for j in jobs)
    if len(jobs) > quota.max_documents or size > quota.max_bytes:
        raise PayloadTooLarge(
            f"this submit holds {len(jobs)} documents and {size} bytes; a tenant may have at "
            f"most {quota.max_documents} documents and {quota.max_bytes} bytes in progress"
        )
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ingestion.quota:' || $1))", tenant)
    row = await conn.fetchrow(
        "SELECT count(*) AS documents, coalesce(sum(size), 0)::bigint AS bytes"
        f" FROM ingestion.jobs WHERE tenant_id = $1 AND status NOT IN {_TERMINAL}",
        tenant,
    )
    assert row is not None
    if row["documents"] + len(jobs) > quota.max_documents or row["bytes"] + size > quota.max_bytes:
        raise RateLimited(
            f"the tenant has {row['documents']} documents ({row['bytes']} bytes) in progress; "
            f"the limit is {quota.max_documents} documents and {quota.max_bytes} bytes: "
            "retry when some have finished",
            {"retry_after": QUOTA_RETRY_AFTER_S},
        )


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self, tenant: str, jobs: list[NewJob], quota: Quota | None = None
    ) -> list[asyncpg.Record]:
        now = datetime.now(UTC)
        async with self.db.transaction() as conn:
            if quota is not None:
                await _check_quota(conn, tenant, jobs, quota)
            return await conn.fetch(
                "INSERT INTO ingestion.jobs (tenant_id, job_id, collection_id, source_id, title,"
                " metadata, filename, declared_type, object_name, size, timings)"
                " SELECT $1, u.job_id, u.collection_id, u.source_id, u.title, u.metadata::jsonb,"
                "   u.filename, u.declared_type, u.object_name, u.size,"
                "   jsonb_build_object('queued', $2::timestamptz)"
                " FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
                "   $8::text[], $9::text[], $10::text[], $11::bigint[])"
                "   AS u(job_id, collection_id, source_id, title, metadata, filename,"
                "        declared_type, object_name, size)"
                " RETURNING *",
                tenant,
                now,
                [j.job_id for j in jobs],
                [j.collection_id for j in jobs],
                [j.source_id for j in jobs],
                [j.title for j in jobs],
                [json.dumps(j.metadata) for j in jobs],
                [j.filename for j in jobs],
                [j.declared_type for j in jobs],
                [j.object_name for j in jobs],
                [j.size for j in jobs],
            )

    async def mark_published(self, tenant: str, job_ids: list[str]) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE ingestion.jobs SET published_at = now()"
                " WHERE tenant_id = $1 AND job_id = ANY($2::text[]) AND published_at IS NULL",
                tenant,
                job_ids,
            )

    async def unpublished(self, older_than_s: float, limit: int) -> list[asyncpg.Record]:
        """Jobs whose parse message never made it to JetStream (all tenants: the sweeper)."""
        async with self.db.connection() as conn:
            return await conn.fetch(
                "SELECT tenant_id, job_id FROM ingestion.jobs WHERE published_at IS NULL"
                " AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
                older_than_s,
                limit,
            )

    async def get(self, tenant: str, job_id: str) -> asyncpg.Record | None:
        async with self.db.connection() as conn:
            return await conn.fetchrow(
                "SELECT * FROM ingestion.jobs WHERE tenant_id = $1 AND job_id = $2",
                tenant,
                job_id,
            )

    async def list(
        self,
        tenant: str,
        *,
        status: str | None,
        collection_id: str | None,
        source_id: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[asyncpg.Record], str | None]:
        before_ts, before_id = _uncursor(cursor) if cursor else (None, "")
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM ingestion.jobs WHERE tenant_id = $1"
                " AND ($2::text IS NULL OR status = $2)"
                " AND ($3::text IS NULL OR collection_id = $3)"
                " AND ($4::text IS NULL OR source_id = $4)"
                " AND ($5::timestamptz IS NULL OR (created_at, job_id) < ($5::timestamptz, $6))"
                " ORDER BY created_at DESC, job_id DESC LIMIT $7",
                tenant,
                status,
                collection_id,
                source_id,
                before_ts,
                before_id,
                limit + 1,
            )
        items = rows[:limit]
        nxt = (
            encode_cursor(items[-1]["created_at"], items[-1]["job_id"])
            if len(rows) > limit
            else None
        )
        return items, nxt

    async def start_parsing(self, tenant: str, job_id: str) -> asyncpg.Record | None:
        """Enter ``parsing`` (one more attempt); ``None`` if the job is past it."""
        async with self.db.connection() as conn:
            return await conn.fetchrow(
                "UPDATE ingestion.jobs SET status = 'parsing', attempts = attempts + 1,"
                " timings = CASE WHEN timings ? 'parsing' THEN timings"
                "   ELSE timings || jsonb_build_object('parsing', now()) END,"
                " updated_at = now()"
                " WHERE tenant_id = $1 AND job_id = $2 AND status IN ('queued', 'parsing')"
                " RETURNING *",
                tenant,
                job_id,
            )

    async def parsed(self, tenant: str, job_id: str, content_type: str, title: str | None) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "UPDATE ingestion.jobs SET content_type = $3, title = coalesce(title, $4),"
                " updated_at = now() WHERE tenant_id = $1 AND job_id = $2",
                tenant,
                job_id,
                content_type,
                title,
            )

    async def advance(
        self,
        tenant: str,
        job_id: str,
        stage: str,
        at: datetime,
        *,
        started: bool = False,
        document_id: str | None = None,
        chunks: int | None = None,
        error: str | None = None,
    ) -> bool:
        """Apply one stage report; ``False`` if there is no such job."""
        async with self.db.connection() as conn:
            row = await conn.fetchval(
                "UPDATE ingestion.jobs SET"
                f" status = CASE WHEN status IN {_TERMINAL} THEN status"
                "   WHEN $3 = 'failed' THEN 'failed'"
                "   WHEN array_position($4::text[], $3) > array_position($4::text[], status)"
                "     THEN $3 ELSE status END,"
                f" error = CASE WHEN $3 = 'failed' AND status NOT IN {_TERMINAL} THEN $8"
                "   ELSE error END,"
                " attempts = attempts + CASE WHEN $6 THEN 1 ELSE 0 END,"
                " timings = CASE WHEN timings ? $3 THEN timings"
                "   ELSE timings || jsonb_build_object($3, $5::timestamptz) END,"
                " document_id = coalesce($7, document_id),"
                " chunks = coalesce($9, chunks),"
                " updated_at = now()"
                " WHERE tenant_id = $1 AND job_id = $2 RETURNING 1",
                tenant,
                job_id,
                stage,
                _STAGES,
                at,
                started,
                document_id,
                error,
                chunks,
            )
        return row is not None

    async def failed_object(self, tenant: str, job_id: str) -> str | None:
        """The stored original of a job that ended ``failed`` (to delete), else ``None``."""
        async with self.db.connection() as conn:
            return await conn.fetchval(  # type: ignore[no-any-return]
                "SELECT object_name FROM ingestion.jobs"
                " WHERE tenant_id = $1 AND job_id = $2 AND status = 'failed'",
                tenant,
                job_id,
            )

    async def fail(self, tenant: str, job_id: str, error: str) -> bool:
        return await self.advance(tenant, job_id, "failed", datetime.now(UTC), error=error)
