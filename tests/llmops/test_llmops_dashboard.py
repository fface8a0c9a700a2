"""The dashboard at GET /dashboard on the real bridge, in a real headless Chromium: the
charts hold the data that was logged, the time-range picker changes them, and tenant B's
token shows none of tenant A's data."""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from bus.context import new_id
from gateway_bridge.app import create_app
from mesh.runner import serving as serving_workers
from schemas import llmops
from tests.bridge_support import bridge_settings, hs_token, serving
from tests.cdp import chromium, chromium_path
from tests.llmops_support import ctx, op, stored

pytestmark = pytest.mark.timeout(180)

CHROMIUM = chromium_path()
#: Set to a path to (re)write the screenshot kept in docs/ (docs/llmops-dashboard.png).
SCREENSHOT_ENV = "LLMOPS_DASHBOARD_SCREENSHOT"

MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet", "local-chat")
USERS = ("alice", "bob", "carol", "dave", "erin", "frank")


def dataset(now: datetime) -> list[dict[str, object]]:
    """~120 calls over the last 20 hours; 40 of them in the last 50 minutes."""
    rnd = random.Random(7)
    ops = []
    for i in range(120):
        recent = i < 40
        age = (
            timedelta(minutes=rnd.uniform(1, 50))
            if recent
            else timedelta(hours=rnd.uniform(1.5, 20))
        )
        model = MODELS[i % len(MODELS)]
        failed = i % 11 == 0
        ops.append(
            op(
                ts=(now - age).isoformat(),
                model=model,
                user=USERS[rnd.randrange(len(USERS))],
                tokens_in=rnd.randrange(50, 3000),
                tokens_out=rnd.randrange(10, 800),
                cost=round(rnd.uniform(0.0005, 0.05), 6),
                latency_ms=rnd.uniform(150, 2500),
                status="error" if failed else "ok",
                error_code="upstream_error" if failed else None,
            )
        )
    return ops


@pytest.fixture(scope="module")
async def llmops_worker(env) -> AsyncIterator[None]:
    async with serving_workers(["llmops"], env):
        yield


@pytest.fixture(scope="module")
async def bridge(settings, llmops_worker) -> AsyncIterator[str]:
    async with serving(create_app(bridge_settings(settings))) as url:
        yield url


async def test_the_dashboard_page_is_served_without_any_data_or_outside_resources(bridge):
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{bridge}/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    page = r.text.replace('"http://www.w3.org/2000/svg"', "")  # a namespace, not a fetch
    assert "http://" not in page and "https://" not in page


def _sums(ops: list[dict[str, object]], key: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for o in ops:
        out[str(o[key])] += float(o["cost"])  # type: ignore[arg-type]
    return out


async def _charts(page) -> dict[str, object]:
    return json.loads(
        await page.evaluate(
            """JSON.stringify({
              requests: [...document.querySelectorAll('#chart-requests rect.bar')]
                .map(r => Number(r.dataset.value)),
              errors: [...document.querySelectorAll('#chart-errors rect.bar')]
                .map(r => Number(r.dataset.value)),
              cost: [...document.querySelectorAll('#chart-cost rect.bar')]
                .map(r => Number(r.dataset.value)),
              latency: [...document.querySelectorAll('#chart-latency circle.point')]
                .map(r => Number(r.dataset.value)),
              models: Object.fromEntries([...document.querySelectorAll('#chart-models g.bar')]
                .map(g => [g.dataset.label,
                           [Number(g.dataset.value), Number(g.dataset.requests)]])),
              users: Object.fromEntries([...document.querySelectorAll('#chart-users g.bar')]
                .map(g => [g.dataset.label,
                           [Number(g.dataset.value), Number(g.dataset.requests)]])),
              unit: document.querySelector('#chart-requests').dataset.unit,
              status: document.getElementById('status').textContent,
            })"""
        )
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (apt-get install chromium)")
async def test_the_dashboard_charts_hold_the_data_that_was_logged(bridge, client, tmp_path):
    assert CHROMIUM
    tenant = f"dash-{new_id()[:8]}"
    ops = dataset(datetime.now(UTC))
    await client.call(llmops.LOG, {"operations": ops}, ctx(tenant))
    assert len(await stored(client, tenant, len(ops), minutes=24 * 60)) == len(ops)
    recent = ops[:40]
    token = hs_token(tenant=tenant, user="alice")

    async with chromium(CHROMIUM) as page:
        await page.goto(f"{bridge}/dashboard#token={token}")
        await page.wait_for("document.body?.dataset.state === 'ready'")
        day = await _charts(page)
        # The token left the address bar once read.
        assert "token" not in await page.evaluate("location.href")

        assert day["unit"] == "hour"
        assert sum(day["requests"]) == len(ops)
        assert sum(day["errors"]) == sum(1 for o in ops if o["status"] == "error")
        assert math.isclose(sum(day["cost"]), sum(float(o["cost"]) for o in ops))
        assert day["latency"] and all(150 * 0.9 <= v <= 2500 * 1.1 for v in day["latency"])
        for model, cost in _sums(ops, "model").items():
            assert math.isclose(day["models"][model][0], cost), model
            assert day["models"][model][1] == sum(1 for o in ops if o["model"] == model)
        for user, cost in _sums(ops, "user").items():
            assert math.isclose(day["users"][user][0], cost), user

        if os.environ.get(SCREENSHOT_ENV):
            await page.screenshot(Path(os.environ[SCREENSHOT_ENV]))
        else:
            await page.screenshot(tmp_path / "dashboard.png")

        # The range picker: the last hour holds only the recent calls, in minute buckets.
        await page.evaluate(
            "document.body.dataset.state = 'switching';"
            "const r = document.getElementById('range'); r.value = '3600';"
            "r.dispatchEvent(new Event('change'))"
        )
        await page.wait_for("document.body?.dataset.state === 'ready'")
        hour = await _charts(page)
        assert hour["unit"] == "minute"
        assert sum(hour["requests"]) == len(recent)
        assert math.isclose(sum(hour["cost"]), sum(float(o["cost"]) for o in recent))
        assert sum(v[1] for v in hour["models"].values()) == len(recent)

        # Another tenant's token: nothing of this tenant's.
        other = hs_token(tenant=f"other-{new_id()[:8]}", user="alice")
        await page.evaluate("sessionStorage.clear(); document.body.dataset.state = 'gone'")
        await page.goto(f"{bridge}/dashboard?again#token={other}")  # a new document
        await page.wait_for("document.body?.dataset.state === 'ready'")
        theirs = await _charts(page)
        assert theirs["requests"] == [] and theirs["models"] == {} and theirs["users"] == {}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (apt-get install chromium)")
async def test_the_dashboard_says_so_when_the_token_is_refused(bridge):
    assert CHROMIUM
    async with chromium(CHROMIUM) as page:
        await page.goto(f"{bridge}/dashboard#token=not-a-jwt")
        await page.wait_for("document.body?.dataset.state === 'error'")
        status = await page.evaluate("document.getElementById('status').textContent")
        assert "401" in status or "nauthenticated" in status or "nauthorized" in status
