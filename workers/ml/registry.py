"""The model registry: list, read, alias, delete versions, upload ONNX models."""

from __future__ import annotations

import structlog
from nats.js import JetStreamContext

from bus.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
)
from bus.sql import tenant_of
from bus.uploads import object_info, read_object
from schemas.context import Context
from schemas.ml import (
    DeleteVersionRequest,
    DeleteVersionResponse,
    GetModelRequest,
    ListModelsRequest,
    ListModelsResponse,
    ModelInfo,
    SetAliasRequest,
    SetAliasResponse,
    UploadModelRequest,
    UploadModelResponse,
    Version,
)
from workers.ml import sandbox
from workers.ml.data import Feature, width_of
from workers.ml.rows import VersionRow
from workers.ml.serving import SessionCache
from workers.ml.settings import MLConfig
from workers.ml.store import ModelStore

_log = structlog.get_logger(__name__)


def to_version(row: VersionRow, aliases: list[str]) -> Version:
    return Version(
        version=row.version,
        algorithm=row.algorithm,
        params=row.params,
        metrics=row.metrics,
        signature=row.signature,
        dataset_hash=row.dataset_hash,
        job_id=row.job_id,
        source=row.source,
        artifact_sha256=row.artifact_sha256,
        artifact_bytes=row.artifact_bytes,
        aliases=aliases,
        predictions=row.predictions,
        mean_latency_ms=row.mean_latency_ms,
        created_at=row.created_at,
    )


class Registry:
    def __init__(
        self, models: ModelStore, js: JetStreamContext, config: MLConfig, sessions: SessionCache
    ) -> None:
        self.models = models
        self.js = js
        self.config = config
        self.sessions = sessions

    async def list_models(self, req: ListModelsRequest, ctx: Context) -> ListModelsResponse:
        items, cursor = await self.models.list_models(tenant_of(ctx), req.limit, req.cursor)
        models = []
        for m, latest, aliases in items:
            alias_map = {a.alias: a.version for a in aliases}
            versions = []
            if latest is not None:
                names = [a for a, v in alias_map.items() if v == latest.version]
                versions.append(to_version(latest, names))
            models.append(
                ModelInfo(
                    name=m.name,
                    task=m.task,
                    latest_version=latest.version if latest is not None else None,
                    aliases=alias_map,
                    versions=versions,
                    created_at=m.created_at,
                    updated_at=m.updated_at,
                )
            )
        return ListModelsResponse(models=models, next_cursor=cursor)

    async def get_model(self, req: GetModelRequest, ctx: Context) -> ModelInfo:
        m, versions, aliases = await self.models.model(tenant_of(ctx), req.model)
        alias_map = {a.alias: a.version for a in aliases}
        return ModelInfo(
            name=m.name,
            task=m.task,
            latest_version=versions[0].version if versions else None,
            aliases=alias_map,
            versions=[
                to_version(v, [a for a, n in alias_map.items() if n == v.version]) for v in versions
            ],
            created_at=m.created_at,
            updated_at=m.updated_at,
        )

    async def set_alias(self, req: SetAliasRequest, ctx: Context) -> SetAliasResponse:
        previous = await self.models.set_alias(tenant_of(ctx), req.model, req.alias, req.version)
        return SetAliasResponse(
            model=req.model, alias=req.alias, version=req.version, previous_version=previous
        )

    async def delete_version(
        self, req: DeleteVersionRequest, ctx: Context
    ) -> DeleteVersionResponse:
        tenant = tenant_of(ctx)
        deleted = await self.models.delete_version(tenant, req.model, req.version)
        if not deleted:
            raise NotFound(f"model {req.model!r} has no version {req.version}")
        self.sessions.drop(tenant, req.model, req.version)
        return DeleteVersionResponse(deleted=True)

    async def upload_model(self, req: UploadModelRequest, ctx: Context) -> UploadModelResponse:
        """Register an uploaded ONNX file after the checks of ``trainer.check_model``,
        which run in a separate process: the file is never loaded any other way."""
        tenant = tenant_of(ctx)
        features = []
        for f in req.features:
            if f.type == "categorical" and not f.categories:
                raise InvalidRequest(f"categorical feature {f.name!r} needs its categories")
            features.append(Feature(f.name, f.type, list(f.categories or [])))
        if len({f.name for f in features}) != len(features):
            raise InvalidRequest("a feature is named twice")
        width = width_of(features)
        info = await object_info(self.js, req.object, tenant)
        if (info.size or 0) > self.config.max_artifact_bytes:
            raise PayloadTooLarge(
                f"model of {info.size} bytes exceeds the {self.config.max_artifact_bytes}-byte"
                " limit"
            )
        _, data = await read_object(
            self.js, req.object, tenant, max_bytes=self.config.max_artifact_bytes
        )
        answer = await sandbox.run(
            {
                "kind": "check_model",
                "data": data,
                "width": width,
                "task": req.task,
                "n_classes": len(req.classes or ()),
            },
            sandbox.Limits(
                time_s=self.config.check_time_s, memory_bytes=self.config.train_memory_bytes
            ),
        )
        signature = {
            "task": req.task,
            "features": [f.as_dict() for f in features],
            "target": None,
            "classes": req.classes,
            "width": width,
            "input": answer["input"],
        }
        version = await self.models.register(
            tenant,
            model=req.name,
            task=req.task,
            algorithm="onnx",
            params={},
            metrics={},
            signature=signature,
            reference=None,
            dataset_hash=None,
            job_id=None,
            source="uploaded",
            artifact=data,
            sha256=answer["sha256"],
        )
        return UploadModelResponse(
            model=req.name, version=version, artifact_sha256=answer["sha256"]
        )
