"""ML Service contracts: ``ml.{train,get_job,list_jobs,cancel_job,predict,list_models,
get_model,set_alias,delete_version,drift,upload_model}.request``.

Training is asynchronous: ``ml.train`` records a job and publishes it to the JetStream
work queue ``ML`` (subject :data:`TRAIN_SUBJECT`, ``Nats-Msg-Id`` = job id); the ML
worker's durable consumer ``ml-train`` trains it in a separate, killable process.
See docs/services/ml.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from schemas.operations import Operation
from schemas.routes import Route

#: JetStream subject of training jobs (stream ``ML``).
TRAIN_SUBJECT = "ml.jobs.train"

# Every request is also bounded by the envelope codec: 8 MiB and 100,000 items in all
# containers together, so rows x (features + 1) x 2 stays under ~100,000 (docs/services/ml.md).
#: Most rows one inline training dataset may carry (larger: upload a CSV).
MAX_INLINE_ROWS = 10_000
#: Most features (columns besides the target) a dataset may have.
MAX_FEATURES = 200
#: Most rows one ``ml.predict`` may score.
MAX_PREDICT_ROWS = 1_000
#: Most rows one ``ml.drift`` may carry inline.
MAX_DRIFT_ROWS = 2_000

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
"""A model or alias name: letters, digits, ``_.-``, up to 128 characters."""
Column = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
ObjectName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./=-]{1,256}$")]
#: A cell of a row: a number, a string or null. Typed here for the OpenAPI document only:
#: the service checks every cell against the dataset or the model's signature itself,
#: naming row and column (a pydantic union per cell would cost more than the inference).
Cell = Annotated[Any, WithJsonSchema({"type": ["number", "string", "null"]})]
Row = dict[str, Cell]
#: A predicted value: a class label (string or number, as in the training data) or, for
#: regression, a number. Documented, not re-validated item by item on the client.
Prediction = Annotated[Any, WithJsonSchema({"type": ["string", "number"]})]

Task = Literal["classification", "regression"]
Algorithm = Literal[
    "logistic_regression",
    "linear_regression",
    "ridge",
    "random_forest",
    "hist_gradient_boosting",
]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FeatureType = Literal["numeric", "categorical"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeatureSpec(_Request):
    """A declared feature. ``categories`` only for an uploaded model's categorical input
    (a trained model learns them from the data)."""

    name: Column
    type: FeatureType
    categories: list[str] | None = Field(default=None, max_length=1000)


class Dataset(_Request):
    """Rows inline, or a CSV file (header line first) in the ``uploads`` object store."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [{"required": ["rows"]}, {"required": ["object"]}],
        },
    )

    rows: list[Row] | None = Field(default=None, min_length=1, max_length=MAX_INLINE_ROWS)
    object: ObjectName | None = Field(
        default=None, description="name of a CSV object in the uploads bucket"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Dataset:
        if (self.rows is None) == (self.object is None):
            raise ValueError("give exactly one of rows or object")
        return self


class TrainRequest(_Request):
    name: Name = Field(description="the model; each successful job adds a version to it")
    task: Task
    algorithm: Algorithm
    params: dict[str, Any] = Field(
        default_factory=dict, description="hyper-parameters, checked against the algorithm"
    )
    target: Column
    features: list[Column | FeatureSpec] | None = Field(
        default=None,
        max_length=MAX_FEATURES,
        description="feature names (type inferred) or specs; default: every other column",
    )
    dataset: Dataset
    test_size: float = Field(default=0.2, gt=0.0, le=0.5)
    time_limit_s: int = Field(
        default=600, ge=1, le=3600, description="the training process is killed after this"
    )
    random_state: int = Field(default=0, ge=0, le=2**31 - 1)


class TrainResponse(BaseModel):
    job_id: str
    status: JobStatus


class GetJobRequest(_Request):
    job_id: Id


class CancelJobRequest(_Request):
    job_id: Id


class Job(BaseModel):
    job_id: str
    status: JobStatus
    name: str
    task: Task
    algorithm: str
    model: str | None = Field(default=None, description="set when the job succeeded")
    version: int | None = None
    metrics: dict[str, float] | None = None
    error: str | None = Field(default=None, description='"<code>: <message>" when failed')
    error_code: str | None = None
    error_details: Any = None
    attempts: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ListJobsRequest(_Request):
    status: JobStatus | None = None
    name: Name | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=256)


class ListJobsResponse(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = None


class Signature(BaseModel):
    """What a version takes and returns; predictions are checked against it."""

    task: Task
    features: list[FeatureSpec]
    target: str | None = None
    classes: list[str | int | float] | None = Field(
        default=None, description="classifier labels, in probability column order"
    )
    width: int = Field(description="columns of the encoded float input")
    input: str = Field(default="X", description="name of the ONNX model's input")


class Version(BaseModel):
    version: int
    algorithm: str
    params: dict[str, Any]
    metrics: dict[str, float]
    signature: Signature
    dataset_hash: str | None = None
    job_id: str | None = Field(default=None, description="lineage: the training job")
    source: Literal["trained", "uploaded"] = "trained"
    artifact_sha256: str
    artifact_bytes: int
    aliases: list[str] = Field(default_factory=list)
    predictions: int = Field(default=0, description="rows scored by this version")
    mean_latency_ms: float | None = Field(default=None, description="per predict call")
    created_at: datetime


class ModelInfo(BaseModel):
    name: str
    task: Task
    latest_version: int | None
    aliases: dict[str, int] = Field(default_factory=dict)
    versions: list[Version] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime


class ListModelsRequest(_Request):
    limit: int = Field(default=100, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=256)


class ListModelsResponse(BaseModel):
    models: list[ModelInfo] = Field(description="each with its latest version only")
    next_cursor: str | None = None


class GetModelRequest(_Request):
    model: Name


class SetAliasRequest(_Request):
    model: Name
    alias: Name
    version: int = Field(ge=1)


class SetAliasResponse(BaseModel):
    model: str
    alias: str
    version: int
    previous_version: int | None = None


class DeleteVersionRequest(_Request):
    model: Name
    version: int = Field(ge=1)


class DeleteVersionResponse(BaseModel):
    deleted: bool


class _Selector(_Request):
    model: Name
    version: int | None = Field(default=None, ge=1)
    alias: Name | None = None

    @model_validator(mode="after")
    def _not_both(self) -> _Selector:
        if self.version is not None and self.alias is not None:
            raise ValueError("give a version or an alias, not both")
        return self


class PredictRequest(_Selector):
    """Without version or alias: the latest version."""

    rows: list[Row] = Field(min_length=1, max_length=MAX_PREDICT_ROWS)


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]
    probabilities: list[list[float]] | None = None


class DriftRequest(_Selector):
    """``rows`` to compare, or (without) the inputs recent predictions kept as a sample."""

    rows: list[Row] | None = Field(default=None, min_length=1, max_length=MAX_DRIFT_ROWS)


class FeatureDrift(BaseModel):
    name: str
    test: Literal["ks", "chi2"]
    statistic: float
    p_value: float | None = None
    distance_metric: Literal["psi", "js"]
    distance: float
    drifted: bool


class DriftResponse(BaseModel):
    model: str
    version: int
    rows: int = Field(description="rows compared with the training reference")
    reference_rows: int
    drifted: bool
    features: list[FeatureDrift]


class UploadModelRequest(_Request):
    """Register an ONNX model already in the uploads bucket as a new version.

    Only ONNX is accepted, and only after checks (size, opset, no external data, one
    float input of the declared width, outputs matching the task); pickle/joblib never.
    """

    name: Name
    object: ObjectName
    task: Task
    features: list[FeatureSpec] = Field(min_length=1, max_length=MAX_FEATURES)
    classes: list[str | int] | None = Field(default=None, min_length=2, max_length=1000)

    @model_validator(mode="after")
    def _classes(self) -> UploadModelRequest:
        if (self.task == "classification") != (self.classes is not None):
            raise ValueError("classes are required for classification and only for it")
        return self


class UploadModelResponse(BaseModel):
    model: str
    version: int
    artifact_sha256: str


# ---------------------------------------------------------------- JetStream message


class TrainJob(BaseModel):
    """``ml.jobs.train``: the job row in Postgres holds the rest."""

    job_id: str


TRAIN = Operation(
    "ml", "train", TrainRequest, TrainResponse, description="queue a training job (202)"
)
GET_JOB = Operation("ml", "get_job", GetJobRequest, Job, idempotent=True, description="one job")
LIST_JOBS = Operation(
    "ml", "list_jobs", ListJobsRequest, ListJobsResponse, idempotent=True, description="jobs"
)
CANCEL_JOB = Operation(
    "ml", "cancel_job", CancelJobRequest, Job, idempotent=True, description="cancel a job"
)
PREDICT = Operation(
    "ml",
    "predict",
    PredictRequest,
    PredictResponse,
    idempotent=True,
    description="score up to 1,000 rows",
)
LIST_MODELS = Operation(
    "ml",
    "list_models",
    ListModelsRequest,
    ListModelsResponse,
    idempotent=True,
    description="models of the tenant",
)
GET_MODEL = Operation(
    "ml", "get_model", GetModelRequest, ModelInfo, idempotent=True, description="one model"
)
SET_ALIAS = Operation(
    "ml",
    "set_alias",
    SetAliasRequest,
    SetAliasResponse,
    idempotent=True,
    description="point an alias at a version",
)
DELETE_VERSION = Operation(
    "ml",
    "delete_version",
    DeleteVersionRequest,
    DeleteVersionResponse,
    # Not retried: a retry after a delete that went through would answer not_found.
    idempotent=False,
    description="delete a version no alias points at",
)
DRIFT = Operation(
    "ml", "drift", DriftRequest, DriftResponse, idempotent=True, description="drift report"
)
UPLOAD_MODEL = Operation(
    "ml",
    "upload_model",
    UploadModelRequest,
    UploadModelResponse,
    description="register a checked ONNX model",
)
OPERATIONS = (
    TRAIN,
    GET_JOB,
    LIST_JOBS,
    CANCEL_JOB,
    PREDICT,
    LIST_MODELS,
    GET_MODEL,
    SET_ALIAS,
    DELETE_VERSION,
    DRIFT,
    UPLOAD_MODEL,
)

_TAGS = ("ml",)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/api/v1/ml/jobs",
        TRAIN,
        status_code=202,
        summary="Queue a training job; answers with its id at once",
        tags=_TAGS,
    ),
    Route("GET", "/api/v1/ml/jobs/{job_id}", GET_JOB, summary="One training job", tags=_TAGS),
    Route("GET", "/api/v1/ml/jobs", LIST_JOBS, summary="Training jobs, newest first", tags=_TAGS),
    Route(
        "POST",
        "/api/v1/ml/jobs/{job_id}/cancel",
        CANCEL_JOB,
        summary="Cancel a queued or running job",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/ml/models/{model}/predict",
        PREDICT,
        summary="Predict up to 1,000 rows with a version, an alias or the latest version",
        tags=_TAGS,
    ),
    Route("GET", "/api/v1/ml/models", LIST_MODELS, summary="Models of the tenant", tags=_TAGS),
    Route(
        "GET",
        "/api/v1/ml/models/{model}",
        GET_MODEL,
        summary="A model with its versions, metrics, signatures and aliases",
        tags=_TAGS,
    ),
    Route(
        "PUT",
        "/api/v1/ml/models/{model}/aliases/{alias}",
        SET_ALIAS,
        summary="Point an alias at a version (atomically)",
        tags=_TAGS,
    ),
    Route(
        "DELETE",
        "/api/v1/ml/models/{model}/versions/{version}",
        DELETE_VERSION,
        summary="Delete a version that no alias points at",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/ml/models/{model}/drift",
        DRIFT,
        summary="Compare recent or given inputs with the training data, per feature",
        tags=_TAGS,
    ),
    Route(
        "POST",
        "/api/v1/ml/models/upload",
        UPLOAD_MODEL,
        summary="Register an uploaded ONNX model (checked) as a new version",
        tags=_TAGS,
    ),
)
