"""``mesh up``: embedded infrastructure where none is configured, then every worker (and
the bridge) as its own process, supervised; Ctrl-C stops all of it in order."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from bus.settings import Settings
from gateway_bridge.settings import BridgeSettings
from mesh.infra import Infrastructure, NatsServer, PostgresServer, RedisServer
from mesh.registry import WORKERS

RESTART_PAUSE_S = 1.0
STOP_TIMEOUT_S = 15.0
SECRET_FILE = "jwt_secret"
DEV_TENANT = "demo"
DEV_USER = "dev"
DEV_TOKEN_TTL_S = 12 * 3600


def _say(text: str) -> None:
    print(f"mesh up | {text}", flush=True)


def _start_infra(data_dir: Path, settings: Settings) -> tuple[Infrastructure, dict[str, str]]:
    infra = Infrastructure()
    urls: dict[str, str] = {}
    if settings.nats_url:
        urls["NATS_URL"] = settings.nats_url
    else:
        infra.nats = NatsServer(data_dir / "nats")
        infra.nats.start()
        urls["NATS_URL"] = infra.nats.url
        _say(f"nats-server (embedded)   {infra.nats.url}  data {infra.nats.data_dir}")
    if settings.database_url:
        urls["DATABASE_URL"] = settings.database_url
    else:
        infra.postgres = PostgresServer(data_dir / "postgres")
        infra.postgres.start()
        urls["DATABASE_URL"] = infra.postgres.url
        _say(f"postgres+pgvector (embedded) {infra.postgres.url}")
    if settings.redis_url:
        urls["REDIS_URL"] = settings.redis_url
    else:
        infra.redis = RedisServer(data_dir / "redis")
        infra.redis.start()
        urls["REDIS_URL"] = infra.redis.url
        _say(f"redis (embedded)         {infra.redis.url}")
    return infra, urls


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mesh", *args], env=env, start_new_session=True)


def _has_bridge() -> bool:
    import importlib.util

    return importlib.util.find_spec("gateway_bridge.app") is not None


def _dev_secret(data_dir: Path, settings: BridgeSettings) -> dict[str, str]:
    """A random JWT secret for this run (never a fixed one), unless JWT is configured.

    Written to ``<data_dir>/jwt_secret`` (0600) so ``mesh token`` mints matching tokens.
    """
    if settings.jwt_secret or settings.jwt_jwks_url:
        return {}
    path = data_dir / SECRET_FILE
    path.unlink(missing_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return {"JWT_SECRET": secret}


def _say_token(settings: BridgeSettings, secret: str | None) -> None:
    if not secret:
        _say("JWT_JWKS_URL is set: get tokens from your identity provider")
        return
    from gateway_bridge.tokens import mint_token

    token = mint_token(
        secret,
        tenant=DEV_TENANT,
        user=DEV_USER,
        roles=["admin"],
        ttl=DEV_TOKEN_TTL_S,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        tenant_claim=settings.jwt_tenant_claim,
    )
    _say(f"development token (tenant {DEV_TENANT}, user {DEV_USER}, 12 h; more: mesh token):")
    print(token, flush=True)
    url = f"http://{settings.bridge_host}:{settings.bridge_port}"
    _say(
        f"try: curl -H 'Authorization: Bearer <token>' -H 'Content-Type: application/json' "
        f'-d \'{{"key":"k"}}\' {url}/api/v1/cache/get   (docs: {url}/docs)'
    )


def up(data_dir: Path, *, bridge: bool = True) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    # The bridge's settings extend the process settings: read once, used for both.
    settings = BridgeSettings()
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    infra, urls = _start_infra(data_dir, settings)
    (data_dir / "env").write_text("".join(f"{k}={v}\n" for k, v in urls.items()))
    env = {**os.environ, **urls}
    parts: dict[str, list[str]] = {name: ["worker", name] for name in WORKERS}
    if bridge and _has_bridge():
        parts["bridge"] = ["bridge"]
        env.update(_dev_secret(data_dir, settings))
    else:
        bridge = False
    procs = {name: _spawn(argv, env) for name, argv in parts.items()}
    _say(
        f"workers: {', '.join(WORKERS)}"
        + (f"; bridge on http://{settings.bridge_host}:{settings.bridge_port}" if bridge else "")
    )
    _say('try: mesh services | mesh request cache.get.request \'{"key":"k"}\' --tenant demo')
    if bridge:
        _say_token(settings, env.get("JWT_SECRET"))
    _say("Ctrl-C stops everything")
    try:
        while not stopping:
            time.sleep(0.2)
            for name, proc in procs.items():
                if proc.poll() is not None and not stopping:
                    _say(f"{name} exited with {proc.returncode}; restarting")
                    time.sleep(RESTART_PAUSE_S)
                    procs[name] = _spawn(parts[name], env)
    finally:
        _say("stopping")
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        infra.stop()
        (data_dir / "env").unlink(missing_ok=True)
        (data_dir / SECRET_FILE).unlink(missing_ok=True)
        _say("stopped")
