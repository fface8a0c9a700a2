"""Operations: health, readiness, metrics, access logs, and the `mesh bridge`/`mesh token` CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import jwt
import pytest
from structlog.testing import capture_logs

from bus.settings import Settings
from gateway_bridge.app import create_app
from gateway_bridge.settings import BridgeSettings
from mesh.infra import NatsServer, free_port
from mesh.up import _dev_secret
from tests.bridge_support import auth, bridge_settings, hs_token, http, serving

pytestmark = pytest.mark.usefixtures("cache_worker")

GET = "/api/v1/cache/get"


@pytest.fixture(scope="module")
async def bridge(settings, cache_worker):
    async with serving(create_app(bridge_settings(settings))) as url:
        yield url


async def test_healthz_answers_without_auth(bridge):
    async with http(bridge) as c:
        r = await c.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


async def test_readyz_checks_nats_and_jetstream(bridge):
    async with http(bridge) as c:
        r = await c.get("/readyz")
    assert r.status_code == 200
    assert r.json() | {"redis": "ok"} == {
        "status": "ready",
        "nats": "connected",
        "jetstream": "ok",
        "redis": "ok",
    }


async def test_readyz_is_503_when_nats_is_gone(settings, tmp_path):
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    try:
        s = bridge_settings(settings, nats_url=nats.url)
        async with serving(create_app(s)) as url, http(url) as c:
            assert (await c.get("/readyz")).status_code == 200
            nats.stop()
            async with asyncio.timeout(10):
                while (r := await c.get("/readyz")).status_code == 200:
                    await asyncio.sleep(0.05)
            healthy = await c.get("/healthz")
    finally:
        nats.stop()
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["details"]["nats"] == "disconnected"
    assert healthy.status_code == 200  # the process is fine; it just cannot serve


async def test_metrics_count_requests_by_route_template_and_status(bridge):
    async with http(bridge) as c:
        await c.post(GET, json={"key": "m"}, headers=auth(hs_token()))
        await c.post(GET, json={"key": "m"})
        await c.get("/no/such/path/123")
        text = (await c.get("/metrics")).text
    assert 'bridge_requests_total{method="POST",route="/api/v1/cache/get",status="200"}' in text
    assert 'bridge_requests_total{method="POST",route="/api/v1/cache/get",status="401"}' in text
    assert 'bridge_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert "/no/such/path/123" not in text  # raw paths would explode label cardinality
    assert 'bridge_request_duration_seconds_bucket{le="0.005",method="POST"' in text
    assert "bridge_requests_in_flight 1.0" in text  # the /metrics request itself


async def test_access_log_has_tenant_and_correlation_id(bridge):
    with capture_logs() as logs:
        async with http(bridge) as c:
            await c.post(
                GET,
                json={"key": "log"},
                headers={**auth(hs_token(tenant="logco")), "X-Correlation-ID": "corr-77"},
            )
    line = next(e for e in logs if e["event"] == "http_request")
    assert line["tenant"] == "logco" and line["correlation_id"] == "corr-77"
    assert line["status"] == 200 and line["route"] == GET
    assert line["log_level"] == "info"


async def test_access_log_errors_mode_logs_only_failed_requests(settings):
    s = bridge_settings(settings, bridge_access_log="errors")
    async with serving(create_app(s)) as url, http(url) as c:
        with capture_logs() as logs:
            ok = await c.post(GET, json={"key": "quiet"}, headers=auth(hs_token()))
            denied = await c.post(GET, json={"key": "quiet"})
    lines = [e for e in logs if e["event"] == "http_request"]
    assert (ok.status_code, denied.status_code) == (200, 401)
    assert [(e["status"], e["code"]) for e in lines] == [(401, "unauthenticated")]


def _cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "BRIDGE_"))}
    assert settings.nats_url and settings.redis_url
    env.update(NATS_URL=settings.nats_url, REDIS_URL=settings.redis_url, LOG_LEVEL="warning")
    env.update(extra)
    return env


def test_mesh_up_dev_secret_is_random_private_and_used_by_mesh_token(tmp_path):
    data_dir = tmp_path / ".mesh"
    data_dir.mkdir()
    blank = BridgeSettings(jwt_secret=None, jwt_jwks_url=None)
    first = _dev_secret(data_dir, blank)["JWT_SECRET"]
    second = _dev_secret(data_dir, blank)["JWT_SECRET"]
    path = data_dir / "jwt_secret"
    assert first != second and len(second) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    configured = BridgeSettings(jwt_secret="s" * 32)
    assert _dev_secret(data_dir, configured) == {}  # configured: left alone
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWT_")}
    out = subprocess.run(
        [sys.executable, "-m", "mesh", "token", "--tenant", "t1", "--user", "me"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    claims = jwt.decode(out.stdout.strip(), second, algorithms=["HS256"])
    assert (claims["tenant_id"], claims["sub"]) == ("t1", "me")


async def test_mesh_bridge_serves_tokens_from_mesh_token_and_stops_gracefully(
    settings, tmp_path: Path
):
    port = free_port()
    env = _cli_env(settings, JWT_SECRET="c" * 40, BRIDGE_PORT=str(port), BRIDGE_HOST="127.0.0.1")
    token = subprocess.run(
        [sys.executable, "-m", "mesh", "token", "--tenant", "cli", "--user", "u", "--roles", "a,b"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", "bridge"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with http(f"http://127.0.0.1:{port}") as c:
            async with asyncio.timeout(60):
                while True:
                    try:
                        if (await c.get("/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    await asyncio.sleep(0.1)
            r = await c.post(GET, json={"key": "cli"}, headers=auth(token))
        assert r.status_code == 200, r.text
        assert jwt.decode(token, "c" * 40, algorithms=["HS256"])["roles"] == ["a", "b"]
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _bridge_children(pid: int) -> list[int]:
    """The processes ``--processes N`` started (multiprocessing spawn children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


async def test_mesh_bridge_processes_share_one_port_and_stop_together(settings, tmp_path: Path):
    port = free_port()
    secret = "p" * 40
    env = _cli_env(settings, JWT_SECRET=secret, BRIDGE_PORT=str(port), BRIDGE_HOST="127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", "bridge", "--processes", "2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):
            while len(_bridge_children(proc.pid)) < 2:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                await asyncio.sleep(0.1)
            children = _bridge_children(proc.pid)
            ready = 0
            while ready < 10:  # fresh connections, spread by the kernel over both
                try:
                    async with http(f"http://127.0.0.1:{port}") as c:
                        ready = ready + 1 if (await c.get("/readyz")).status_code == 200 else 0
                except httpx.TransportError:
                    ready = 0
                    await asyncio.sleep(0.1)
        async with http(f"http://127.0.0.1:{port}") as c:
            r = await c.post(GET, json={"key": "procs"}, headers=auth(hs_token(secret)))
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 40)
        assert code == 0
        assert not any(Path(f"/proc/{child}").exists() for child in children)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_mesh_bridge_processes_must_be_positive():
    out = subprocess.run(
        [sys.executable, "-m", "mesh", "bridge", "--processes", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--processes" in out.stderr
