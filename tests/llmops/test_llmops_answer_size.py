"""A metrics answer larger than one bus message carries is refused with a reason
(``invalid_request``), not sent and then rejected by the caller's codec as a malformed
reply (``internal``); an answer within the limits comes through whole over NATS."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from bus.codec import Limits
from bus.context import new_id
from bus.errors import InvalidRequest
from mesh.runner import serving
from schemas import llmops
from schemas.llmops import MetricsRequest
from tests.llmops_support import ctx, stored_row
from workers.llmops.queries import answer_items
from workers.llmops.store import Store, open_database

pytestmark = pytest.mark.timeout(120)

USERS = 6
CALLS = 8_000  # one per (minute, user): 8,000 buckets by user and minute


@pytest.fixture(scope="module")
async def llmops_worker(env) -> AsyncIterator[None]:
    async with serving(["llmops"], env):
        yield


async def test_an_answer_too_large_for_a_message_is_refused_with_a_reason(
    settings, client, llmops_worker
):
    assert settings.database_url
    tenant = f"big-{new_id()[:8]}"
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1400)
    base = stored_row(tenant, start, request_id="", user_id="", cost=0.001)
    rows = [
        dataclasses.replace(
            base,
            ts=start + timedelta(minutes=i // USERS, seconds=1),
            request_id=f"r{i}",
            user_id=f"u{i % USERS}",
        )
        for i in range(CALLS)
    ]
    db = await open_database(settings.database_url)
    try:
        await Store(db).ingest(rows)
    finally:
        await db.close()
    window = {
        "from": start.isoformat(),
        "to": (start + timedelta(minutes=CALLS // USERS + 1)).isoformat(),
        "bucket": "minute",
        "group_by": ["user"],
    }
    every = ["requests", "errors", "tokens_in", "tokens_out", "cost", "latency_p50",
             "latency_p95", "latency_p99", "ttft_p95"]  # fmt: skip
    big = {**window, "metrics": every}
    assert answer_items(CALLS, MetricsRequest.model_validate(big)) > Limits().max_container
    with pytest.raises(InvalidRequest) as info:
        await client.call(llmops.METRICS, big, ctx(tenant, timeout=60))
    assert "more than one message carries" in info.value.message
    assert info.value.details["buckets"] == CALLS
    # Two metrics: the same 8,000 buckets fit, and come through whole and right.
    small = {**window, "metrics": ["requests", "cost"]}
    answer = await client.call(llmops.METRICS, small, ctx(tenant, timeout=60))
    assert len(answer.buckets) == CALLS
    assert sum(b["values"]["requests"] for b in answer.buckets) == CALLS
    assert {b["group"]["user"] for b in answer.buckets} == {f"u{i}" for i in range(USERS)}
    # Another tenant asking the same question sees nothing of these calls.
    other = await client.call(llmops.METRICS, small, ctx(f"big-{new_id()[:8]}", timeout=60))
    assert other.buckets == []
