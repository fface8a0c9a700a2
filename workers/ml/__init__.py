"""ML Service: training jobs on JetStream, a versioned model registry, ONNX inference and
drift reports (docs/services/ml.md).

``lifespan`` is imported lazily so the training process (``python -m
workers.ml.trainer``) starts without the worker's NATS and Postgres imports.
"""

from typing import Any

__all__ = ["lifespan"]


def __getattr__(name: str) -> Any:
    if name == "lifespan":
        from workers.ml.service import lifespan

        return lifespan
    raise AttributeError(name)
