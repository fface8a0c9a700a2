"""The model registry in Postgres (``ml.versions``, aliases, artifacts) and serving records.

Every query filters on ``tenant_id``.
"""

from __future__ import annotations

import base64
from typing import Any

from bus.errors import Conflict, InvalidRequest, NotFound
from bus.postgres import Database
from bus.sql import row_of
from workers.ml.rows import AliasRow, ModelRow, ResolvedVersion, VersionRow


class ModelStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def register(
        self,
        tenant: str,
        *,
        model: str,
        task: str,
        algorithm: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        signature: dict[str, Any],
        reference: dict[str, Any] | None,
        dataset_hash: str | None,
        job_id: str | None,
        source: str,
        artifact: bytes,
        sha256: str,
        attempt: int | None = None,
    ) -> int:
        """Insert the next version of ``model`` (created on first use); with ``job_id``,
        mark the job succeeded in the same transaction. Returns the version."""
        async with self.db.transaction() as conn:
            # The upsert locks the model's row: concurrent registrations number one by one.
            existing = await conn.fetchval(
                "INSERT INTO ml.models (tenant_id, name, task) VALUES ($1, $2, $3)"
                " ON CONFLICT (tenant_id, name) DO UPDATE SET updated_at = now()"
                " RETURNING task",
                tenant,
                model,
                task,
            )
            if existing != task:
                raise Conflict(f"model {model!r} is a {existing} model, not {task}")
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM ml.versions"
                " WHERE tenant_id = $1 AND model = $2",
                tenant,
                model,
            )
            await conn.execute(
                "INSERT INTO ml.versions (tenant_id, model, version, algorithm, params, metrics,"
                " signature, reference, dataset_hash, job_id, source, artifact, artifact_sha256,"
                " artifact_bytes) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7::jsonb,"
                " $8::jsonb, $9, $10, $11, $12, $13, $14)",
                tenant,
                model,
                version,
                algorithm,
                params,
                metrics,
                signature,
                reference,
                dataset_hash,
                job_id,
                source,
                artifact,
                sha256,
                len(artifact),
            )
            if job_id is not None:
                done = await conn.fetchval(
                    "UPDATE ml.jobs SET status = 'succeeded', version = $3, metrics = $4::jsonb,"
                    " dataset = NULL, finished_at = now() WHERE tenant_id = $1 AND job_id = $2"
                    " AND status = 'running' AND ($5::int IS NULL OR attempts = $5) RETURNING 1",
                    tenant,
                    job_id,
                    version,
                    metrics,
                    attempt,
                )
                if done is None:  # cancelled or taken over meanwhile: register nothing
                    raise _Superseded()
        return int(version)

    async def resolve(
        self, tenant: str, model: str, version: int | None, alias: str | None
    ) -> ResolvedVersion:
        """The version row (no artifact) chosen by version, alias or latest."""
        async with self.db.connection() as conn:
            if alias is not None:
                row = await conn.fetchrow(
                    "SELECT v.model, v.version, v.signature, v.artifact_sha256"
                    " FROM ml.aliases a JOIN ml.versions v ON v.tenant_id = a.tenant_id"
                    "  AND v.model = a.model AND v.version = a.version"
                    " WHERE a.tenant_id = $1 AND a.model = $2 AND a.alias = $3",
                    tenant,
                    model,
                    alias,
                )
                what = f"alias {alias!r}"
            elif version is not None:
                row = await conn.fetchrow(
                    "SELECT model, version, signature, artifact_sha256 FROM ml.versions"
                    " WHERE tenant_id = $1 AND model = $2 AND version = $3",
                    tenant,
                    model,
                    version,
                )
                what = f"version {version}"
            else:
                row = await conn.fetchrow(
                    "SELECT model, version, signature, artifact_sha256 FROM ml.versions"
                    " WHERE tenant_id = $1 AND model = $2 ORDER BY version DESC LIMIT 1",
                    tenant,
                    model,
                )
                what = "version"
        if row is None:
            raise NotFound(f"model {model!r} has no {what}")
        return row_of(ResolvedVersion, row)

    async def artifact(self, tenant: str, model: str, version: int) -> tuple[bytes, str]:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT artifact, artifact_sha256 FROM ml.versions"
                " WHERE tenant_id = $1 AND model = $2 AND version = $3",
                tenant,
                model,
                version,
            )
        if row is None:
            raise NotFound(f"model {model!r} has no version {version}")
        return bytes(row["artifact"]), row["artifact_sha256"]

    async def reference(self, tenant: str, model: str, version: int) -> Any:
        """The version's drift reference as JSON text (parsed off the loop), or ``None``."""
        async with self.db.connection() as conn:
            value = await conn.fetchval(
                "SELECT reference::text FROM ml.versions"
                " WHERE tenant_id = $1 AND model = $2 AND version = $3",
                tenant,
                model,
                version,
            )
        return value

    async def model(
        self, tenant: str, name: str
    ) -> tuple[ModelRow, list[VersionRow], list[AliasRow]]:
        async with self.db.connection() as conn:
            m = await conn.fetchrow(
                "SELECT * FROM ml.models WHERE tenant_id = $1 AND name = $2", tenant, name
            )
            if m is None:
                raise NotFound(f"no model {name!r}")
            versions = await conn.fetch(_VERSIONS + " ORDER BY v.version DESC", tenant, name)
            aliases = await conn.fetch(
                "SELECT alias, version FROM ml.aliases WHERE tenant_id = $1 AND model = $2"
                " ORDER BY alias",
                tenant,
                name,
            )
        return (
            row_of(ModelRow, m),
            [row_of(VersionRow, v) for v in versions],
            [row_of(AliasRow, a) for a in aliases],
        )

    async def list_models(
        self, tenant: str, limit: int, cursor: str | None
    ) -> tuple[list[tuple[ModelRow, VersionRow | None, list[AliasRow]]], str | None]:
        after = ""
        if cursor:
            try:
                after = base64.urlsafe_b64decode(cursor.encode()).decode()
            except Exception:
                raise InvalidRequest("invalid cursor") from None
        async with self.db.connection() as conn:
            models = await conn.fetch(
                "SELECT * FROM ml.models WHERE tenant_id = $1 AND name > $2 ORDER BY name LIMIT $3",
                tenant,
                after,
                limit + 1,
            )
            items = models[:limit]
            names = [m["name"] for m in items]
            latest = await conn.fetch(
                "SELECT DISTINCT ON (v.model) v.model AS _m, "
                + _VERSION_COLUMNS
                + _VERSION_FROM
                + " WHERE v.tenant_id = $1 AND v.model = ANY($2::text[])"
                " ORDER BY v.model, v.version DESC",
                tenant,
                names,
            )
            aliases = await conn.fetch(
                "SELECT model, alias, version FROM ml.aliases"
                " WHERE tenant_id = $1 AND model = ANY($2::text[]) ORDER BY alias",
                tenant,
                names,
            )
        by_model = {r["_m"]: row_of(VersionRow, r) for r in latest}
        out = [
            (
                row_of(ModelRow, m),
                by_model.get(m["name"]),
                [row_of(AliasRow, a) for a in aliases if a["model"] == m["name"]],
            )
            for m in items
        ]
        nxt = (
            base64.urlsafe_b64encode(items[-1]["name"].encode()).decode()
            if len(models) > limit
            else None
        )
        return out, nxt

    async def set_alias(self, tenant: str, model: str, alias: str, version: int) -> int | None:
        """Point ``alias`` at ``version`` in one statement; the previous version."""
        async with self.db.transaction() as conn:
            exists = await conn.fetchval(
                "SELECT 1 FROM ml.versions WHERE tenant_id = $1 AND model = $2 AND version = $3"
                " FOR SHARE",
                tenant,
                model,
                version,
            )
            if exists is None:
                raise NotFound(f"model {model!r} has no version {version}")
            previous = await conn.fetchval(
                "SELECT version FROM ml.aliases WHERE tenant_id = $1 AND model = $2"
                " AND alias = $3 FOR UPDATE",
                tenant,
                model,
                alias,
            )
            await conn.execute(
                "INSERT INTO ml.aliases (tenant_id, model, alias, version) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (tenant_id, model, alias)"
                " DO UPDATE SET version = EXCLUDED.version, updated_at = now()",
                tenant,
                model,
                alias,
                version,
            )
        return previous

    async def delete_version(self, tenant: str, model: str, version: int) -> bool:
        async with self.db.transaction() as conn:
            aliases = await conn.fetch(
                "SELECT alias FROM ml.aliases WHERE tenant_id = $1 AND model = $2 AND version = $3",
                tenant,
                model,
                version,
            )
            if aliases:
                names = ", ".join(a["alias"] for a in aliases)
                raise Conflict(
                    f"version {version} of {model!r} is aliased ({names}); move the aliases first",
                    {"aliases": [a["alias"] for a in aliases]},
                )
            done = await conn.fetchval(
                "DELETE FROM ml.versions WHERE tenant_id = $1 AND model = $2 AND version = $3"
                " RETURNING 1",
                tenant,
                model,
                version,
            )
        return done is not None

    # ------------------------------------------------------------ serving records

    async def record_serving(
        self,
        stats: dict[tuple[str, str, int], list[float]],
        samples: list[tuple[str, str, int, str]],
        keep: int,
    ) -> None:
        """Add batched counters and samples; trim each version's samples to ``keep``."""
        async with self.db.transaction() as conn:
            for (tenant, model, version), (calls, rows, total_ms, max_ms) in stats.items():
                await conn.execute(
                    "INSERT INTO ml.serving AS s (tenant_id, model, version, calls, rows,"
                    " total_ms, max_ms) SELECT $1, $2, $3, $4, $5, $6, $7"
                    " WHERE EXISTS (SELECT 1 FROM ml.versions WHERE tenant_id = $1"
                    "   AND model = $2 AND version = $3)"
                    " ON CONFLICT (tenant_id, model, version) DO UPDATE SET"
                    " calls = s.calls + EXCLUDED.calls, rows = s.rows + EXCLUDED.rows,"
                    " total_ms = s.total_ms + EXCLUDED.total_ms,"
                    " max_ms = greatest(s.max_ms, EXCLUDED.max_ms), last_at = now()",
                    tenant,
                    model,
                    version,
                    int(calls),
                    int(rows),
                    total_ms,
                    max_ms,
                )
            if samples:
                await conn.execute(
                    "INSERT INTO ml.samples (tenant_id, model, version, row)"
                    " SELECT u.t, u.m, u.v, u.r::jsonb"
                    " FROM unnest($1::text[], $2::text[], $3::int[], $4::text[]) AS u(t, m, v, r)"
                    " WHERE EXISTS (SELECT 1 FROM ml.versions x WHERE x.tenant_id = u.t"
                    "   AND x.model = u.m AND x.version = u.v)",
                    [s[0] for s in samples],
                    [s[1] for s in samples],
                    [s[2] for s in samples],
                    [s[3] for s in samples],
                )
                for tenant, model, version in {(s[0], s[1], s[2]) for s in samples}:
                    await conn.execute(
                        "DELETE FROM ml.samples WHERE tenant_id = $1 AND model = $2"
                        " AND version = $3 AND id < (SELECT id FROM ml.samples"
                        "   WHERE tenant_id = $1 AND model = $2 AND version = $3"
                        "   ORDER BY id DESC OFFSET $4 LIMIT 1)",
                        tenant,
                        model,
                        version,
                        keep - 1,
                    )

    async def recent_samples(
        self, tenant: str, model: str, version: int, limit: int
    ) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT row FROM ml.samples WHERE tenant_id = $1 AND model = $2"
                " AND version = $3 ORDER BY id DESC LIMIT $4",
                tenant,
                model,
                version,
                limit,
            )
        return [r["row"] for r in rows]


class _Superseded(Exception):
    """The job was cancelled (or another attempt took over) while this one trained."""


Superseded = _Superseded

_VERSION_COLUMNS = (
    "v.version, v.algorithm, v.params, v.metrics, v.signature, v.dataset_hash, v.job_id,"
    " v.source, v.artifact_sha256, v.artifact_bytes, v.created_at,"
    " coalesce(s.rows, 0) AS predictions,"
    " CASE WHEN s.calls > 0 THEN s.total_ms / s.calls END AS mean_latency_ms"
)
_VERSION_FROM = (
    " FROM ml.versions v LEFT JOIN ml.serving s ON s.tenant_id = v.tenant_id"
    " AND s.model = v.model AND s.version = v.version"
)
_VERSIONS = (
    "SELECT " + _VERSION_COLUMNS + _VERSION_FROM + " WHERE v.tenant_id = $1 AND v.model = $2"
)
