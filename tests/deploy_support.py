"""Helpers for the deployment tests: nats-server on the deployment's own config files.

``AuthNats`` is one node with ``deploy/nats/nats-auth.conf`` (the users, passwords minted per
session); ``ClusterNode`` is one node of a 3-node cluster on ``deploy/nats/nats-server.conf``
itself, its ports moved to free loopback ports on the command line.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.infra import NatsServer, _binary, free_port
from mesh.registry import WORKERS

ROOT = Path(__file__).resolve().parent.parent
AUTH_CONF = ROOT / "deploy" / "nats" / "nats-auth.conf"
SERVER_CONF = ROOT / "deploy" / "nats" / "nats-server.conf"
DEV_CONF = ROOT / "nats.conf"

#: Every NATS user of the deployment: the services (those not built yet included), the
#: bridge, the stream provisioner and the operators' admin.
SERVICES = ("cache", "gateway", "prompt", "rag", "ingestion", "agent", "llmops", "ml", "promptgen")
USERS = (*SERVICES, "bridge", "provision", "admin")


def password_var(user: str) -> str:
    return f"{user.upper()}_NATS_PASSWORD"


def mint_passwords() -> dict[str, str]:
    """A fresh password per user, never a fixed one. nats-server parses the value of an
    environment variable as a config value, so a password must read as a string: a
    letter first, then letters and digits (docs/deploy.md, "Passwords")."""
    return {user: "p" + secrets.token_hex(24) for user in USERS}


def password_env(passwords: dict[str, str]) -> dict[str, str]:
    return {password_var(user): pw for user, pw in passwords.items()}


def registry_services() -> list[str]:
    return sorted(WORKERS)


@dataclass
class AuthNats(NatsServer):
    """One nats-server with the deployment's users (the development limits otherwise)."""

    passwords: dict[str, str] = field(default_factory=dict)
    name: str = "nats-auth"

    def prepare(self) -> None:
        super().prepare()
        # NATS includes are relative to the including file: copy both beside it, as the
        # Kubernetes ConfigMap mounts them side by side.
        shutil.copy(DEV_CONF, self.data_dir / "base.conf")
        shutil.copy(AUTH_CONF, self.data_dir / "nats-auth.conf")
        (self.data_dir / "server.conf").write_text("include base.conf\ninclude nats-auth.conf\n")

    def command(self) -> list[str]:
        return [
            _binary("nats-server"),
            "-c",
            str(self.data_dir / "server.conf"),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.data_dir / "jetstream"),
            "-n",
            f"mesh-auth-{self.port}",
        ]

    def popen_kwargs(self) -> dict[str, object]:
        return {"env": {**os.environ, **password_env(self.passwords)}}


@dataclass
class ClusterNode(NatsServer):
    """One node of a 3-node cluster running ``deploy/nats/nats-server.conf`` unchanged; client,
    cluster and monitoring ports come from the command line (they override the file)."""

    index: int = 0
    cluster_ports: tuple[int, ...] = ()
    monitor_port: int = field(default_factory=free_port)
    passwords: dict[str, str] = field(default_factory=dict)
    config: Path = SERVER_CONF
    name: str = "nats-node"
    server_name: str = ""  # nats-<index>, set below (the file reads it from the environment)

    def __post_init__(self) -> None:
        if not self.server_name:
            self.server_name = f"nats-{self.index}"

    def command(self) -> list[str]:
        return [
            _binary("nats-server"),
            "-c",
            str(self.config),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "--cluster",
            f"nats://127.0.0.1:{self.cluster_ports[self.index]}",
        ]

    def popen_kwargs(self) -> dict[str, object]:
        routes = {
            f"NATS_ROUTE_{i + 1}": f"nats://127.0.0.1:{port}"
            for i, port in enumerate(self.cluster_ports)
        }
        env = {
            **os.environ,
            **password_env(self.passwords),
            **routes,
            "NATS_SERVER_NAME": self.server_name,
            "NATS_STORE_DIR": str(self.data_dir / "store"),
        }
        return {"env": env}

    def monitor(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.monitor_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback
            return json.loads(r.read())
