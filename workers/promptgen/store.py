"""Postgres storage of the Prompt Generator (schema ``promptgen``), every query scoped by
tenant.

``specs`` has one row per spec; ``versions`` the immutable versions (a trigger refuses any
change but the status columns, and deletes); ``publications`` which agent or tool a
version became; ``feedback`` one vote per user and target; ``audit`` every state change
(append-only). A status change is one conditional ``UPDATE … WHERE status = <from>`` plus
its audit row in the same transaction, so two reviewers racing get one winner and a
``conflict``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from bus.context import new_id
from bus.errors import Conflict, InvalidRequest, NotFound
from bus.postgres import Database, create_database, migrate, migrations_of
from schemas.promptgen import AuditRecord, FeedbackSummary

SCHEMA = "promptgen"
DB_POOL_SIZE = 8

Row = dict[str, Any]


def new_spec_id() -> str:
    return new_id("spec")


async def open_database(dsn: str) -> Database:
    db = await create_database(dsn, min_size=1, max_size=DB_POOL_SIZE)
    try:
        await migrate(db, SCHEMA, migrations_of("workers.promptgen"))
    except BaseException:
        await db.close()
        raise
    return db


def _row(record: asyncpg.Record | None) -> Row | None:
    if record is None:
        return None
    return dict(record)  # jsonb columns arrive decoded (the pool's codecs)


def _cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


def _uncursor(cursor: str, *types: type) -> list[Any]:
    """The parts of a cursor this service made, each of the given type; else invalid."""
    try:
        parts = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not (
            isinstance(parts, list)
            and len(parts) == len(types)
            and all(isinstance(p, t) for p, t in zip(parts, types, strict=True))
        ):
            raise ValueError
        if any(isinstance(p, int) and not 0 <= p < 2**62 for p in parts):
            raise ValueError
        if types and types[0] is str:
            parts[0] = datetime.fromisoformat(parts[0])
        return parts
    except (ValueError, TypeError, UnicodeDecodeError):
        raise InvalidRequest("cursor is not one this service gave") from None


@dataclass(frozen=True)
class NewVersion:
    spec: dict[str, Any]
    checks: list[dict[str, Any]]
    checks_passed: bool
    side_effects: list[str]
    prompt: str | None
    generation: dict[str, Any]
    diff: list[dict[str, Any]] | None = None
    base_version: int | None = None


_INSERT_VERSION = """
INSERT INTO promptgen.versions (tenant_id, spec_id, version, status, spec, checks,
    checks_passed, side_effects, diff, base_version, prompt, generation, created_by)
VALUES ($1, $2, $3, 'draft', $4::jsonb, $5::jsonb, $6, $7, $8::jsonb, $9, $10, $11::jsonb, $12)
RETURNING *
"""
_AUDIT = """
INSERT INTO promptgen.audit (tenant_id, spec_id, version, action, actor, from_status,
    to_status, reason, details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
"""


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- specs and versions -----------------------------------------------------------

    async def create(
        self, tenant: str, kind: str, name: str, user: str | None, v: NewVersion
    ) -> Row:
        spec_id = new_spec_id()
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO promptgen.specs (tenant_id, spec_id, kind, name, created_by,"
                " latest_version) VALUES ($1, $2, $3, $4, $5, 1)",
                tenant,
                spec_id,
                kind,
                name,
                user,
            )
            row = await self._insert_version(conn, tenant, spec_id, 1, user, v)
            await self._audit(conn, tenant, spec_id, 1, "generate", user, None, "draft", None, {})
        return row

    async def add_version(
        self, tenant: str, spec_id: str, name: str, user: str | None, v: NewVersion
    ) -> Row:
        async with self.db.transaction() as conn:
            spec = await conn.fetchrow(
                "SELECT latest_version FROM promptgen.specs WHERE tenant_id = $1 AND spec_id = $2"
                " FOR UPDATE",
                tenant,
                spec_id,
            )
            if spec is None:
                raise NotFound(f"no spec {spec_id}")
            version = spec["latest_version"] + 1
            row = await self._insert_version(conn, tenant, spec_id, version, user, v)
            await conn.execute(
                "UPDATE promptgen.specs SET latest_version = $3, name = $4, updated_at = now()"
                " WHERE tenant_id = $1 AND spec_id = $2",
                tenant,
                spec_id,
                version,
                name,
            )
            await self._audit(
                conn,
                tenant,
                spec_id,
                version,
                "refine",
                user,
                None,
                "draft",
                None,
                {"base_version": v.base_version},
            )
        return row

    async def _insert_version(
        self,
        conn: asyncpg.Connection,
        tenant: str,
        spec_id: str,
        version: int,
        user: str | None,
        v: NewVersion,
    ) -> Row:
        record = await conn.fetchrow(
            _INSERT_VERSION,
            tenant,
            spec_id,
            version,
            v.spec,
            v.checks,
            v.checks_passed,
            v.side_effects,
            v.diff,
            v.base_version,
            v.prompt,
            v.generation,
            user,
        )
        row = _row(record)
        assert row is not None
        return row

    async def get_spec(self, tenant: str, spec_id: str) -> Row:
        async with self.db.connection() as conn:
            row = _row(
                await conn.fetchrow(
                    "SELECT * FROM promptgen.specs WHERE tenant_id = $1 AND spec_id = $2",
                    tenant,
                    spec_id,
                )
            )
        if row is None:
            raise NotFound(f"no spec {spec_id}")
        return row

    async def get_version(self, tenant: str, spec_id: str, version: int) -> Row:
        async with self.db.connection() as conn:
            row = _row(
                await conn.fetchrow(
                    "SELECT * FROM promptgen.versions"
                    " WHERE tenant_id = $1 AND spec_id = $2 AND version = $3",
                    tenant,
                    spec_id,
                    version,
                )
            )
        if row is None:
            raise NotFound(f"no version {version} of spec {spec_id}")
        return row

    async def versions(self, tenant: str, spec_id: str) -> list[Row]:
        async with self.db.connection() as conn:
            records = await conn.fetch(
                "SELECT version, status, checks_passed, created_by, created_at"
                " FROM promptgen.versions WHERE tenant_id = $1 AND spec_id = $2"
                " ORDER BY version",
                tenant,
                spec_id,
            )
        return [dict(r) for r in records]

    async def list_specs(
        self,
        tenant: str,
        *,
        kind: str | None,
        status: str | None,
        user: str | None,
        cursor: str | None,
        limit: int,
    ) -> tuple[list[Row], str | None]:
        after: list[Any] = _uncursor(cursor, str, str) if cursor else [None, None]
        async with self.db.connection() as conn:
            records = await conn.fetch(
                """
                SELECT s.*, v.status AS latest_status
                FROM promptgen.specs s
                JOIN promptgen.versions v ON v.tenant_id = s.tenant_id
                    AND v.spec_id = s.spec_id AND v.version = s.latest_version
                WHERE s.tenant_id = $1
                  AND ($2::text IS NULL OR s.kind = $2)
                  AND ($3::text IS NULL OR v.status = $3)
                  AND ($4::text IS NULL OR s.created_by = $4)
                  AND ($5::timestamptz IS NULL OR (s.created_at, s.spec_id) < ($5, $6))
                ORDER BY s.created_at DESC, s.spec_id DESC
                LIMIT $7
                """,
                tenant,
                kind,
                status,
                user,
                after[0],
                after[1],
                limit + 1,
            )
        rows = [dict(r) for r in records[:limit]]
        more = len(records) > limit
        nxt = _cursor(rows[-1]["created_at"].isoformat(), rows[-1]["spec_id"]) if more else None
        return rows, nxt

    # --- lifecycle --------------------------------------------------------------------

    async def transition(
        self,
        tenant: str,
        spec_id: str,
        version: int,
        *,
        expect: str,
        to: str,
        action: str,
        actor: str | None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        publication: dict[str, Any] | None = None,
    ) -> Row:
        """Move a version from ``expect`` to ``to`` (one winner), with its audit record."""
        column = {
            "pending_review": ("submitted_by", "submitted_at"),
            "approved": ("reviewed_by", "reviewed_at"),
            "rejected": ("reviewed_by", "reviewed_at"),
            "published": ("published_by", "published_at"),
        }[to]
        by, at = column
        async with self.db.transaction() as conn:
            record = await conn.fetchrow(
                f"UPDATE promptgen.versions SET status = $4, {by} = $5, {at} = now(),"
                " review_reason = CASE WHEN $7 THEN $6 ELSE review_reason END"
                " WHERE tenant_id = $1 AND spec_id = $2 AND version = $3 AND status = $8"
                " RETURNING *",
                tenant,
                spec_id,
                version,
                to,
                actor,
                reason,
                to in ("approved", "rejected"),
                expect,
            )
            if record is None:
                current = await conn.fetchval(
                    "SELECT status FROM promptgen.versions"
                    " WHERE tenant_id = $1 AND spec_id = $2 AND version = $3",
                    tenant,
                    spec_id,
                    version,
                )
                if current is None:
                    raise NotFound(f"no version {version} of spec {spec_id}")
                raise Conflict(
                    f"version {version} is {current}, not {expect}",
                    details={"status": current},
                )
            if publication is not None:
                await conn.execute(
                    "INSERT INTO promptgen.publications (tenant_id, spec_id, version, agent_id,"
                    " tool_name, published_by) VALUES ($1, $2, $3, $4, $5, $6)",
                    tenant,
                    spec_id,
                    version,
                    publication.get("agent_id"),
                    publication.get("tool_name"),
                    actor,
                )
                await conn.execute(
                    "UPDATE promptgen.specs SET published_version = $3, agent_id = $4,"
                    " tool_name = $5, updated_at = now() WHERE tenant_id = $1 AND spec_id = $2",
                    tenant,
                    spec_id,
                    version,
                    publication.get("agent_id"),
                    publication.get("tool_name"),
                )
            else:
                await conn.execute(
                    "UPDATE promptgen.specs SET updated_at = now()"
                    " WHERE tenant_id = $1 AND spec_id = $2",
                    tenant,
                    spec_id,
                )
            await self._audit(
                conn, tenant, spec_id, version, action, actor, expect, to, reason, details or {}
            )
        row = _row(record)
        assert row is not None
        return row

    async def _audit(
        self,
        conn: asyncpg.Connection,
        tenant: str,
        spec_id: str,
        version: int | None,
        action: str,
        actor: str | None,
        from_status: str | None,
        to_status: str | None,
        reason: str | None,
        details: dict[str, Any],
    ) -> None:
        await conn.execute(
            _AUDIT,
            tenant,
            spec_id,
            version,
            action,
            actor,
            from_status,
            to_status,
            reason,
            details,
        )

    async def audit(
        self, tenant: str, spec_id: str | None, cursor: str | None, limit: int
    ) -> tuple[list[AuditRecord], str | None]:
        before = _uncursor(cursor, int)[0] if cursor else None
        async with self.db.connection() as conn:
            records = await conn.fetch(
                "SELECT * FROM promptgen.audit WHERE tenant_id = $1"
                " AND ($2::text IS NULL OR spec_id = $2)"
                " AND ($3::bigint IS NULL OR audit_id < $3)"
                " ORDER BY audit_id DESC LIMIT $4",
                tenant,
                spec_id,
                before,
                limit + 1,
            )
        items = []
        for r in records[:limit]:
            row = _row(r)
            assert row is not None
            items.append(AuditRecord.model_validate(row))
        nxt = _cursor(items[-1].audit_id) if len(records) > limit else None
        return items, nxt

    # --- publications and feedback ----------------------------------------------------

    async def published_at(
        self, tenant: str, agent_id: str, when: datetime
    ) -> tuple[str, int] | None:
        """The spec version that was the agent's published version at ``when``."""
        async with self.db.connection() as conn:
            record = await conn.fetchrow(
                "SELECT spec_id, version FROM promptgen.publications"
                " WHERE tenant_id = $1 AND agent_id = $2 AND published_at <= $3"
                " ORDER BY published_at DESC LIMIT 1",
                tenant,
                agent_id,
                when,
            )
        return (record["spec_id"], record["version"]) if record else None

    async def put_feedback(
        self,
        tenant: str,
        spec_id: str,
        version: int,
        run_id: str | None,
        user: str | None,
        kind: str,
        value: int,
        comment: str | None,
    ) -> str:
        async with self.db.transaction() as conn:
            feedback_id = await conn.fetchval(
                """
                INSERT INTO promptgen.feedback (feedback_id, tenant_id, spec_id, version, run_id,
                    user_id, kind, value, comment)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                ON CONFLICT (tenant_id, spec_id, version, run_id, user_id) DO UPDATE
                SET kind = EXCLUDED.kind, value = EXCLUDED.value, comment = EXCLUDED.comment,
                    updated_at = now()
                RETURNING feedback_id
                """,
                new_id("fb"),
                tenant,
                spec_id,
                version,
                run_id or "",
                user or "",
                kind,
                value,
                comment,
            )
            await self._audit(
                conn,
                tenant,
                spec_id,
                version,
                "feedback",
                user,
                None,
                None,
                None,
                {"run_id": run_id, "kind": kind, "value": value},
            )
        return str(feedback_id)

    async def feedback_summaries(self, tenant: str, spec_id: str) -> dict[int, FeedbackSummary]:
        async with self.db.connection() as conn:
            records = await conn.fetch(
                """
                SELECT version, count(*) AS count,
                    count(*) FILTER (WHERE kind = 'thumbs' AND value = 1) AS up,
                    count(*) FILTER (WHERE kind = 'thumbs' AND value = 0) AS down,
                    count(*) FILTER (WHERE kind = 'rating') AS ratings,
                    avg(value) FILTER (WHERE kind = 'rating') AS mean
                FROM promptgen.feedback WHERE tenant_id = $1 AND spec_id = $2
                GROUP BY version
                """,
                tenant,
                spec_id,
            )
        return {
            r["version"]: FeedbackSummary(
                count=r["count"],
                thumbs_up=r["up"],
                thumbs_down=r["down"],
                ratings=r["ratings"],
                mean_rating=round(float(r["mean"]), 3) if r["mean"] is not None else None,
            )
            for r in records
        }

    async def feedback_comments(
        self, tenant: str, spec_id: str, version: int, limit: int = 20
    ) -> list[Row]:
        async with self.db.connection() as conn:
            records = await conn.fetch(
                "SELECT kind, value, comment FROM promptgen.feedback"
                " WHERE tenant_id = $1 AND spec_id = $2 AND version = $3"
                " ORDER BY updated_at DESC LIMIT $4",
                tenant,
                spec_id,
                version,
                limit,
            )
        return [dict(r) for r in records]
