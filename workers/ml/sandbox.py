"""Run one request in a fresh ``python -m workers.ml.trainer`` process, killably.

The process gets its input on stdin and answers on stdout (msgpack). It is killed
(SIGKILL) when the time limit passes, when ``cancelled`` is set, or when the awaiting
task is cancelled; it also dies with the worker (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import msgpack
import structlog

from bus.errors import Internal, InvalidRequest, MeshError, PayloadTooLarge
from workers.ml.trainer import MEMORY_ENV, PARENT_ENV

_log = structlog.get_logger(__name__)

#: Largest answer read back (an ONNX model plus metrics and the drift reference).
MAX_ANSWER_BYTES = 256 * 1024 * 1024
STDERR_TAIL = 4000


class Cancelled(Exception):
    """The run was cancelled by the ``cancelled`` event."""


class TimeLimit(MeshError):
    """The process ran past its time limit and was killed (not retried)."""

    code = "timeout"


@dataclass(frozen=True)
class Limits:
    time_s: float
    memory_bytes: int = 0
    threads: int = 1


async def run(
    request: dict[str, Any],
    limits: Limits,
    *,
    cancelled: asyncio.Event | None = None,
) -> dict[str, Any]:
    """The process's answer (``ok`` true); a failed answer is raised as its error."""
    env = {
        **os.environ,
        PARENT_ENV: str(os.getpid()),
        MEMORY_ENV: str(limits.memory_bytes),
        # One job, ``threads`` cores: scikit-learn's OpenMP and BLAS pools follow these.
        "OMP_NUM_THREADS": str(limits.threads),
        "OPENBLAS_NUM_THREADS": str(limits.threads),
        "MKL_NUM_THREADS": str(limits.threads),
        "PYTHONWARNINGS": "ignore",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers.ml.trainer",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        limit=MAX_ANSWER_BYTES,
    )
    body = msgpack.packb(request, use_bin_type=True)
    communicate = asyncio.ensure_future(proc.communicate(body))
    waits: list[asyncio.Future[Any]] = [communicate]
    cancel_wait = asyncio.ensure_future(cancelled.wait()) if cancelled is not None else None
    if cancel_wait is not None:
        waits.append(cancel_wait)
    try:
        done, _ = await asyncio.wait(
            waits, timeout=limits.time_s, return_when=asyncio.FIRST_COMPLETED
        )
        if communicate not in done:
            _kill(proc)
            if cancel_wait is not None and cancel_wait in done:
                raise Cancelled()
            raise TimeLimit(f"training exceeded its time limit of {limits.time_s:g} s")
        stdout, stderr = communicate.result()
    finally:
        if cancel_wait is not None:
            cancel_wait.cancel()
        if proc.returncode is None:
            _kill(proc)
        if not communicate.done():
            communicate.cancel()
            with contextlib.suppress(BaseException):
                await communicate
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            await asyncio.wait_for(proc.wait(), 5)
    if stderr:
        _log.info("trainer_stderr", tail=stderr[-STDERR_TAIL:].decode(errors="replace"))
    try:
        answer = msgpack.unpackb(stdout, raw=False, strict_map_key=False) if stdout else None
    except Exception:
        answer = None
    if not isinstance(answer, dict):
        if proc.returncode and proc.returncode < 0:
            raise Internal(f"the training process was killed by signal {-proc.returncode}")
        raise Internal(f"the training process exited ({proc.returncode}) without an answer")
    if answer.get("ok"):
        return answer
    code, message, details = answer.get("code"), str(answer.get("message")), answer.get("details")
    if code == "invalid_request":
        raise InvalidRequest(message, details)
    if code == "payload_too_large":
        raise PayloadTooLarge(message, details)
    raise Internal(message, details)


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


__all__ = ["Cancelled", "Limits", "TimeLimit", "run"]
