"""onnxruntime sessions cached per (tenant, model, version), bounded by artifact bytes.

Versions are immutable, so a cached session never goes stale; which version an alias
means is read from Postgres on every request, so moving an alias takes effect at once.
An artifact's sha256 is checked against the registry before a session is built from it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from bus.errors import Internal
from workers.ml.data import Feature, features_of

#: Default bound on the summed artifact bytes of cached sessions (a session takes a small
#: multiple of its model's size).
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


@dataclass
class Loaded:
    session: ort.InferenceSession
    features: list[Feature]
    signature: dict[str, Any]
    size: int
    input: str


Key = tuple[str, str, int]


class SessionCache:
    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[Key, Loaded] = OrderedDict()
        self.bytes = 0
        self.loading: dict[Key, asyncio.Future[Loaded]] = {}

    def get(self, key: Key) -> Loaded | None:
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
        return hit

    async def load(
        self, key: Key, signature: dict[str, Any], fetch: Any, expected_sha: str
    ) -> Loaded:
        """The cached session, or one built from ``await fetch()`` (once per key)."""
        hit = self.get(key)
        if hit is not None:
            return hit
        pending = self.loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Loaded] = asyncio.get_running_loop().create_future()
        self.loading[key] = fut
        try:
            artifact, stored_sha = await fetch()
            loaded = await asyncio.to_thread(_build, artifact, stored_sha, expected_sha, signature)
            self._put(key, loaded)
            fut.set_result(loaded)
            return loaded
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self.loading[key]

    def _put(self, key: Key, loaded: Loaded) -> None:
        self.entries[key] = loaded
        self.bytes += loaded.size
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.size

    def drop(self, tenant: str, model: str, version: int) -> None:
        old = self.entries.pop((tenant, model, version), None)
        if old is not None:
            self.bytes -= old.size


def _build(
    artifact: bytes, stored_sha: str, expected_sha: str, signature: dict[str, Any]
) -> Loaded:
    digest = hashlib.sha256(artifact).hexdigest()
    if digest != stored_sha or digest != expected_sha:
        raise Internal("model artifact failed its sha256 check")  # corrupted: never served
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    return Loaded(
        session=session,
        features=features_of(signature),
        signature=signature,
        size=len(artifact),
        input=signature.get("input") or session.get_inputs()[0].name,
    )


def infer(loaded: Loaded, X: np.ndarray) -> tuple[list[Any], list[list[float]] | None]:
    """Predictions (labels mapped back to the training classes) and class probabilities."""
    outputs = loaded.session.run(None, {loaded.input: X})
    sig = loaded.signature
    if sig["task"] == "classification":
        classes = sig["classes"]
        probs = np.asarray(outputs[1], dtype=np.float64)
        labels = np.asarray(outputs[0]).ravel()
        if (
            labels.dtype.kind in "iu"
            and labels.size
            and 0 <= labels.min()
            and labels.max() < len(classes)
        ):
            predictions = [classes[i] for i in labels.tolist()]
        else:  # an uploaded model that outputs its own labels: use the probabilities
            predictions = [classes[i] for i in probs.argmax(axis=1).tolist()]
        return predictions, np.round(probs, 6).tolist()
    return np.asarray(outputs[0], dtype=np.float64).ravel().tolist(), None
