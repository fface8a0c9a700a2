"""Postgres storage of the Prompt Service (schema ``prompt``), every query scoped by tenant.

``templates`` holds one row per (tenant, name); ``versions`` the immutable saves (a trigger
refuses UPDATE); ``labels`` one row per (template, label), so moving a label is a single
upsert. ``latest`` is not stored: it is the highest existing version. Writes that depend
on the current state (new version, label move, version delete) lock the template row
first (``SELECT … FOR UPDATE``), so concurrent writers queue and the loser sees the
winner's state; the primary key on (template_id, version) backs this up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from bus.errors import Conflict, NotFound
from bus.postgres import (
    Database,
    create_database,
    migrate,
    migrations_of,
)
from schemas.prompt import LATEST, TemplateType

#: Postgres connections per worker: a render is one short query.
DB_POOL_SIZE = 16


@dataclass(frozen=True)
class Body:
    """The versioned content of a save, validated and analysed by the renderer."""

    template: str | None
    messages: list[dict[str, str]] | None
    config: dict[str, Any]
    variables: list[str]
    declared: list[str]
    refs: list[str]
    commit_message: str | None = None


@dataclass(frozen=True)
class VersionRow:
    template_id: str
    name: str
    type: TemplateType
    version: int
    template: str | None
    messages: list[dict[str, str]] | None
    config: dict[str, Any]
    variables: list[str]
    declared: list[str]
    refs: list[str]
    commit_message: str | None
    created_by: str | None
    created_at: datetime


_VERSION_COLUMNS = """
    t.template_id::text AS template_id, t.name, t.type, v.version, v.template,
    v.messages, v.config, v.variables, v.declared, v.refs,
    v.commit_message, v.created_by, v.created_at
"""

_BY_LABEL = f"""
SELECT {_VERSION_COLUMNS}
FROM prompt.templates t
JOIN prompt.labels l
  ON l.tenant_id = t.tenant_id AND l.template_id = t.template_id AND l.label = $3
JOIN prompt.versions v
  ON v.tenant_id = t.tenant_id AND v.template_id = t.template_id AND v.version = l.version
WHERE t.tenant_id = $1 AND t.name = $2
"""

_BY_VERSION = f"""
SELECT {_VERSION_COLUMNS}
FROM prompt.templates t
JOIN prompt.versions v
  ON v.tenant_id = t.tenant_id AND v.template_id = t.template_id AND v.version = $3
WHERE t.tenant_id = $1 AND t.name = $2
"""

_LATEST = f"""
SELECT {_VERSION_COLUMNS}
FROM prompt.templates t
JOIN LATERAL (
    SELECT * FROM prompt.versions v
    WHERE v.tenant_id = t.tenant_id AND v.template_id = t.template_id
    ORDER BY v.version DESC LIMIT 1
) v ON true
WHERE t.tenant_id = $1 AND t.name = $2
"""

# Lock the template row. The latest version is read by a *separate* statement after the
# lock is held: under READ COMMITTED a statement that waited for the lock still evaluates
# its subqueries with the snapshot taken before waiting, and would miss the winner's row.
_LOCK = """
SELECT template_id, type, last_version FROM prompt.templates
WHERE tenant_id = $1 AND name = $2
FOR UPDATE
"""

_LATEST_NUMBER = """
SELECT max(version) FROM prompt.versions WHERE tenant_id = $1 AND template_id = $2
"""

_INSERT_VERSION = """
INSERT INTO prompt.versions
    (tenant_id, template_id, version, template, messages, config, variables, declared, refs,
     commit_message, created_by)
VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, $10, $11)
RETURNING created_at
"""

_MOVE_LABEL = """
INSERT INTO prompt.labels (tenant_id, template_id, label, version)
VALUES ($1, $2, $3, $4)
ON CONFLICT (template_id, label)
DO UPDATE SET version = EXCLUDED.version, updated_at = now()
"""

_LIST = """
SELECT t.template_id::text AS template_id, t.name, t.type, t.created_at, t.updated_at,
       (SELECT max(v.version) FROM prompt.versions v
        WHERE v.tenant_id = t.tenant_id AND v.template_id = t.template_id) AS latest_version,
       (SELECT coalesce(jsonb_object_agg(l.label, l.version), '{}'::jsonb)
        FROM prompt.labels l
        WHERE l.tenant_id = t.tenant_id AND l.template_id = t.template_id) AS labels
FROM prompt.templates t
WHERE t.tenant_id = $1
  AND ($2::text IS NULL OR t.name ILIKE '%' || $2 || '%' ESCAPE '\\')
  AND ($3::text IS NULL OR EXISTS (
        SELECT 1 FROM prompt.labels l
        WHERE l.tenant_id = t.tenant_id AND l.template_id = t.template_id AND l.label = $3))
  AND ($4::text IS NULL OR t.name > $4)
ORDER BY t.name
LIMIT $5
"""

_LIST_VERSIONS = """
SELECT v.version, v.commit_message, v.created_by, v.created_at,
       coalesce(array_agg(l.label ORDER BY l.label) FILTER (WHERE l.label IS NOT NULL),
                '{}') AS labels
FROM prompt.versions v
LEFT JOIN prompt.labels l
  ON l.tenant_id = v.tenant_id AND l.template_id = v.template_id AND l.version = v.version
WHERE v.tenant_id = $1 AND v.template_id = $2 AND ($3::int IS NULL OR v.version < $3)
GROUP BY v.version, v.commit_message, v.created_by, v.created_at
ORDER BY v.version DESC
LIMIT $4
"""


async def open_database(dsn: str, max_size: int = DB_POOL_SIZE) -> Database:
    """Open the pool the handlers use and migrate the ``prompt`` schema."""
    db = await create_database(dsn, min_size=1, max_size=max_size)
    try:
        await migrate(db, "prompt", migrations_of("workers.prompt"))
    except BaseException:
        await db.close()
        raise
    return db


def _row(record: asyncpg.Record) -> VersionRow:
    return VersionRow(
        template_id=record["template_id"],
        name=record["name"],
        type=record["type"],
        version=record["version"],
        template=record["template"],
        messages=record["messages"],
        config=record["config"],
        variables=list(record["variables"]),
        declared=list(record["declared"]),
        refs=list(record["refs"]),
        commit_message=record["commit_message"],
        created_by=record["created_by"],
        created_at=record["created_at"],
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class PromptStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reads -----------------------------------------------------------------------

    async def find(
        self, tenant: str, name: str, *, label: str | None = None, version: int | None = None
    ) -> VersionRow | None:
        """The version named by ``version``, or by ``label`` (``latest``: the newest)."""
        async with self.db.connection() as conn:
            if version is not None:
                record = await conn.fetchrow(_BY_VERSION, tenant, name, version)
            elif label == LATEST:
                record = await conn.fetchrow(_LATEST, tenant, name)
            else:
                record = await conn.fetchrow(_BY_LABEL, tenant, name, label)
        return _row(record) if record else None

    async def head(self, tenant: str, name: str) -> tuple[str, int] | None:
        """``(template_id, latest version)`` of a template, or ``None``."""
        async with self.db.connection() as conn:
            record = await conn.fetchrow(
                "SELECT t.template_id::text AS template_id,"
                " (SELECT max(version) FROM prompt.versions v"
                "  WHERE v.tenant_id = t.tenant_id AND v.template_id = t.template_id) AS latest"
                " FROM prompt.templates t WHERE t.tenant_id = $1 AND t.name = $2",
                tenant,
                name,
            )
        return (record["template_id"], record["latest"]) if record else None

    async def labels_of(self, tenant: str, template_id: str, version: int) -> tuple[list[str], int]:
        """Labels on ``version`` (``latest`` included when it is the newest), and the
        latest version number."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT label FROM prompt.labels"
                " WHERE tenant_id = $1 AND template_id = $2 AND version = $3 ORDER BY label",
                tenant,
                template_id,
                version,
            )
            latest = await conn.fetchval(_LATEST_NUMBER, tenant, template_id)
        labels = [r["label"] for r in rows]
        return ([*labels, LATEST] if version == latest else labels), int(latest)

    async def list_templates(
        self, tenant: str, query: str | None, label: str | None, limit: int, after: str | None
    ) -> list[dict[str, Any]]:
        if label == LATEST:  # every template has a latest version
            label = None
        pattern = _escape_like(query) if query else None
        async with self.db.connection() as conn:
            rows = await conn.fetch(_LIST, tenant, pattern, label, after, limit)
        out = []
        for r in rows:
            labels = dict(r["labels"])
            labels[LATEST] = r["latest_version"]
            out.append({**dict(r), "labels": labels})
        return out

    async def list_versions(
        self, tenant: str, template_id: str, limit: int, before: int | None
    ) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(_LIST_VERSIONS, tenant, template_id, before, limit)
        return [dict(r) for r in rows]

    # -- writes ----------------------------------------------------------------------

    async def create(
        self, tenant: str, name: str, type_: str, body: Body, labels: list[str], user: str | None
    ) -> str:
        """Create the template and its version 1; ``Conflict`` if the name is taken."""
        async with self.db.transaction() as conn:
            try:
                template_id = await conn.fetchval(
                    "INSERT INTO prompt.templates (tenant_id, name, type, last_version)"
                    " VALUES ($1, $2, $3, 1) RETURNING template_id",
                    tenant,
                    name,
                    type_,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict(f"a template named {name!r} already exists") from None
            await self._insert(conn, tenant, template_id, 1, body, user)
            for label in labels:
                await conn.execute(_MOVE_LABEL, tenant, template_id, label, 1)
        return str(template_id)

    async def add_version(
        self,
        tenant: str,
        name: str,
        base_version: int,
        body: Body,
        labels: list[str],
        user: str | None,
    ) -> tuple[str, int]:
        """Save ``body`` as the next version if ``base_version`` is still the latest."""
        async with self.db.transaction() as conn:
            head = await conn.fetchrow(_LOCK, tenant, name)
            if head is None:
                raise NotFound(f"no template named {name!r}")
            latest = await conn.fetchval(_LATEST_NUMBER, tenant, head["template_id"])
            if latest != base_version:
                raise Conflict(
                    f"{name!r} was updated: base_version {base_version} is not the latest"
                    f" ({latest})",
                    {"latest_version": latest},
                )
            version = head["last_version"] + 1
            try:
                await self._insert(conn, tenant, head["template_id"], version, body, user)
            except asyncpg.UniqueViolationError:  # unreachable under the row lock
                raise Conflict(f"version {version} of {name!r} already exists") from None
            await conn.execute(
                "UPDATE prompt.templates SET last_version = $3, updated_at = now()"
                " WHERE tenant_id = $1 AND template_id = $2",
                tenant,
                head["template_id"],
                version,
            )
            for label in labels:
                await conn.execute(_MOVE_LABEL, tenant, head["template_id"], label, version)
        return str(head["template_id"]), version

    async def _insert(
        self,
        conn: asyncpg.Connection,
        tenant: str,
        template_id: Any,
        version: int,
        body: Body,
        user: str | None,
    ) -> None:
        await conn.execute(
            _INSERT_VERSION,
            tenant,
            template_id,
            version,
            body.template,
            body.messages,
            body.config,
            body.variables,
            body.declared,
            body.refs,
            body.commit_message,
            user,
        )

    async def set_label(self, tenant: str, name: str, label: str, version: int) -> int | None:
        """Point ``label`` at ``version``; return the version it pointed at before."""
        async with self.db.transaction() as conn:
            head = await conn.fetchrow(_LOCK, tenant, name)
            if head is None:
                raise NotFound(f"no template named {name!r}")
            exists = await conn.fetchval(
                "SELECT 1 FROM prompt.versions"
                " WHERE tenant_id = $1 AND template_id = $2 AND version = $3",
                tenant,
                head["template_id"],
                version,
            )
            if not exists:
                raise NotFound(f"{name!r} has no version {version}")
            previous = await conn.fetchval(
                "SELECT version FROM prompt.labels"
                " WHERE tenant_id = $1 AND template_id = $2 AND label = $3",
                tenant,
                head["template_id"],
                label,
            )
            await conn.execute(_MOVE_LABEL, tenant, head["template_id"], label, version)
        return None if previous is None else int(previous)

    async def unset_label(self, tenant: str, name: str, label: str) -> int:
        async with self.db.transaction() as conn:
            head = await conn.fetchrow(_LOCK, tenant, name)
            if head is None:
                raise NotFound(f"no template named {name!r}")
            version = await conn.fetchval(
                "DELETE FROM prompt.labels"
                " WHERE tenant_id = $1 AND template_id = $2 AND label = $3 RETURNING version",
                tenant,
                head["template_id"],
                label,
            )
        if version is None:
            raise NotFound(f"{name!r} has no label {label!r}")
        return int(version)

    async def delete(self, tenant: str, name: str) -> int:
        """Delete a template, its versions and labels; return how many versions went."""
        async with self.db.transaction() as conn:
            head = await conn.fetchrow(_LOCK, tenant, name)
            if head is None:
                raise NotFound(f"no template named {name!r}")
            count = await conn.fetchval(
                "SELECT count(*) FROM prompt.versions WHERE tenant_id = $1 AND template_id = $2",
                tenant,
                head["template_id"],
            )
            await conn.execute(
                "DELETE FROM prompt.templates WHERE tenant_id = $1 AND template_id = $2",
                tenant,
                head["template_id"],
            )
        return int(count)

    async def delete_version(self, tenant: str, name: str, version: int) -> int:
        """Delete one version that carries no label; return the latest version after."""
        async with self.db.transaction() as conn:
            head = await conn.fetchrow(_LOCK, tenant, name)
            if head is None:
                raise NotFound(f"no template named {name!r}")
            labels = await conn.fetch(
                "SELECT label FROM prompt.labels"
                " WHERE tenant_id = $1 AND template_id = $2 AND version = $3 ORDER BY label",
                tenant,
                head["template_id"],
                version,
            )
            deleted = await conn.fetchval(
                "SELECT count(*) FROM prompt.versions"
                " WHERE tenant_id = $1 AND template_id = $2 AND version = $3",
                tenant,
                head["template_id"],
                version,
            )
            if not deleted:
                raise NotFound(f"{name!r} has no version {version}")
            if labels:
                names = [r["label"] for r in labels]
                raise Conflict(
                    f"version {version} of {name!r} carries labels {names}: move them first",
                    {"labels": names},
                )
            remaining = await conn.fetchval(
                "SELECT count(*) FROM prompt.versions WHERE tenant_id = $1 AND template_id = $2",
                tenant,
                head["template_id"],
            )
            if remaining == 1:
                raise Conflict(
                    f"version {version} is the only version of {name!r}: delete the template"
                )
            await conn.execute(
                "DELETE FROM prompt.versions"
                " WHERE tenant_id = $1 AND template_id = $2 AND version = $3",
                tenant,
                head["template_id"],
                version,
            )
            latest = await conn.fetchval(_LATEST_NUMBER, tenant, head["template_id"])
        return int(latest)
