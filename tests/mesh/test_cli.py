"""The `mesh` command against the session's real servers, as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from bus.settings import Settings


async def mesh(settings: Settings, *args: str, timeout: float = 30) -> Result:
    """Run `mesh ...` without blocking the loop (the session's in-process workers share it)."""
    env = {
        **os.environ,
        "NATS_URL": settings.nats_url or "",
        "REDIS_URL": settings.redis_url or "",
        "DATABASE_URL": settings.database_url or "",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesh",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return Result(proc.returncode, out.decode(), err.decode())


@dataclass
class Result:
    returncode: int | None
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def cache_process(settings: Settings):
    """`mesh worker cache` as its own process, the production shape."""
    env = {
        **os.environ,
        "NATS_URL": settings.nats_url or "",
        "REDIS_URL": settings.redis_url or "",
        "DATABASE_URL": settings.database_url or "",
        "SERVICE_NAME": "cache",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", "worker", "cache"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "serving" in line:
            break
    yield proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    assert proc.returncode == 0


async def test_request_round_trips_a_value_through_the_cache(settings, cache_process):
    out = await mesh(
        settings,
        "request",
        "cache.set.request",
        '{"key": "cli", "value": [1, "two"]}',
        "--tenant",
        "cli-tenant",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"ok": True}
    out = await mesh(
        settings, "request", "cache.get.request", '{"key": "cli"}', "--tenant", "cli-tenant"
    )
    assert json.loads(out.stdout) == {"hit": True, "value": [1, "two"]}


async def test_request_prints_the_error_contract_and_exits_1(settings, cache_process):
    out = await mesh(settings, "request", "cache.get.request", '{"nope": 1}', "--tenant", "t")
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"]["code"] == "invalid_request"


async def test_request_rejects_bad_json_argument(settings):
    out = await mesh(settings, "request", "cache.get.request", "{oops", "--tenant", "t")
    assert out.returncode != 0 and "not valid JSON" in out.stderr


async def test_services_lists_the_cache_service_with_counts(settings, cache_process):
    await mesh(settings, "request", "cache.get.request", '{"key": "x"}', "--tenant", "t")
    out = await mesh(settings, "services", "--json")
    rows = json.loads(out.stdout)
    cache = [r for r in rows if r["name"] == "cache"]
    assert cache
    endpoints = {e["subject"]: e for row in cache for e in row["endpoints"]}
    assert set(endpoints) >= {
        "cache.get.request",
        "cache.set.request",
        "cache.delete.request",
        "cache.invalidate.request",
    }
    assert sum(row_e["num_requests"] for row in cache for row_e in row["endpoints"]) >= 1
