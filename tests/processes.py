"""`python -m mesh worker NAMES` as its own process (the production shape), for the tests
that kill a worker mid-job and start it again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bus.settings import Settings

#: Start one more worker process; each call returns its handle (SIGKILL it to crash it).
StartWorker = Callable[[], subprocess.Popen[bytes]]


@contextmanager
def worker_processes(settings: Settings, log_dir: Path, *names: str) -> Iterator[StartWorker]:
    """Yield a function that starts the workers; every process left running is stopped
    (SIGTERM, then SIGKILL after 20 s) on exit. Each process logs to its own file."""
    procs: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        "NATS_URL": settings.nats_url or "",
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "LOG_LEVEL": "warning",
    }

    def start() -> subprocess.Popen[bytes]:
        with open(log_dir / f"{'-'.join(names)}-{len(procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mesh", "worker", *names],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
