"""LLMOps Service against real NATS and Postgres: logging, query, metrics, cost, budgets,
alerts, tenancy and input validation."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.api import DeliverPolicy

from bus import jetstream
from bus.codec import Codec
from bus.context import new_id
from bus.errors import InvalidRequest
from mesh.runner import serving
from schemas import llmops
from schemas.gateway import LLMOPS_SUBJECT
from tests.llmops_support import ctx, op, query_all, stored, window

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
async def llmops_worker(env) -> AsyncIterator[None]:
    async with serving(["llmops"], env):
        yield


pytestmark = [pytestmark, pytest.mark.usefixtures("llmops_worker")]


async def test_logged_operations_appear_in_query_metrics_and_cost(client):
    tenant = f"t-{new_id()[:8]}"
    ops = [
        op(model="m-a", user="alice", tokens_in=100, tokens_out=10, cost=0.5, latency_ms=100),
        op(model="m-a", user="bob", tokens_in=200, tokens_out=20, cost=1.0, latency_ms=200),
        op(
            model="m-b",
            user="alice",
            tokens_in=50,
            tokens_out=5,
            cached_tokens_read=40,
            cost=0.25,
            latency_ms=400,
            ttft_ms=50,
            status="error",
            error_code="upstream_error",
        ),
    ]
    answer = await client.call(llmops.LOG, {"operations": ops}, ctx(tenant))
    assert answer.accepted == 3
    got = await stored(client, tenant, 3)
    assert sorted(o.request_id for o in got) == sorted(o["request_id"] for o in ops)
    by_id = {o.request_id: o for o in got}
    assert by_id[ops[2]["request_id"]].cached_tokens_read == 40
    assert by_id[ops[2]["request_id"]].error_code == "upstream_error"

    cost = await client.call(llmops.COST, {**window(), "group_by": ["user"]}, ctx(tenant))
    assert math.isclose(cost.total_cost, 1.75)
    rows = {r.group["user"]: r for r in cost.rows}
    assert math.isclose(rows["alice"].cost, 0.75) and rows["alice"].tokens_in == 150
    assert rows["alice"].cached_tokens_read == 40 and rows["alice"].requests == 2
    assert rows["bob"].tokens_out == 20

    for bucket in ("minute", "hour", "day"):
        m = await client.call(
            llmops.METRICS,
            {
                **window(),
                "bucket": bucket,
                "group_by": ["model"],
                "metrics": ["requests", "errors", "tokens_in", "cost", "latency_p95", "ttft_p95"],
            },
            ctx(tenant),
        )
        totals: dict[str, dict[str, float]] = {}
        for b in m.buckets:
            model = b["group"]["model"] or ""
            t = totals.setdefault(model, {"requests": 0, "errors": 0, "cost": 0})
            for k in ("requests", "errors", "cost"):
                t[k] += b["values"][k] or 0
        assert totals["m-a"]["requests"] == 2 and totals["m-b"]["errors"] == 1, bucket
        assert math.isclose(totals["m-a"]["cost"], 1.5), bucket
        if len(m.buckets) == 2:  # both calls in one bucket: p95 is the larger latency
            a = next(b for b in m.buckets if b["group"]["model"] == "m-a")
            p95 = a["values"]["latency_p95"]
            err = m.percentile_relative_error
            assert p95 is not None and abs(p95 - 200) <= 200 * err + 1e-9, (bucket, p95)
            # Three calls are too few for the histograms to pay: raw rows, exact.
            assert (m.source, err) == ("raw", 0)
            ttft = next(b for b in m.buckets if b["group"]["model"] == "m-b")["values"]["ttft_p95"]
            assert ttft is not None and abs(ttft - 50) <= 50 * err + 1e-9


async def test_the_same_operation_logged_twice_is_counted_once(client, env):
    tenant = f"t-{new_id()[:8]}"
    one = op(cost=0.2)
    await client.call(llmops.LOG, {"operations": [one, one]}, ctx(tenant))
    await client.call(llmops.LOG, {"operations": [one]}, ctx(tenant))
    # And once more straight onto the stream with another message id (past JetStream's
    # duplicate window): only the store's idempotency stands between it and a double count.
    from workers.llmops.events import event_of

    event = event_of(llmops.LLMOperation.model_validate(one), tenant)
    await jetstream.publish(env.js, LLMOPS_SUBJECT, event, ctx(tenant), msg_id=new_id())
    marker = op(cost=0.0)
    await client.call(llmops.LOG, {"operations": [marker]}, ctx(tenant))
    got = await stored(client, tenant, 2)
    await asyncio.sleep(1.5)  # give a wrongly stored duplicate its chance to show up
    got = await query_all(client, tenant)
    assert sorted(o.request_id for o in got) == sorted([one["request_id"], marker["request_id"]])
    cost = await client.call(llmops.COST, window(), ctx(tenant))
    assert math.isclose(cost.total_cost, 0.2) and cost.rows[0].requests == 2


async def test_query_pages_newest_first_with_filters(client):
    tenant = f"t-{new_id()[:8]}"
    now = datetime.now(UTC)
    ops = [
        op(ts=(now - timedelta(seconds=i)).isoformat(), user="u1" if i % 2 else "u2")
        for i in range(25)
    ]
    await client.call(llmops.LOG, {"operations": ops}, ctx(tenant))
    await stored(client, tenant, 25)
    pages, cursor = [], None
    while True:
        req = {**window(), "limit": 5, "filters": {"user": "u1"}}
        if cursor:
            req["cursor"] = cursor
        page = await client.call(llmops.QUERY, req, ctx(tenant))
        pages.append(page.operations)
        cursor = page.next_cursor
        if not cursor:
            break
    listed = [o for p in pages for o in p]
    assert len(listed) == 12 and {o.user for o in listed} == {"u1"}
    assert [o.ts for o in listed] == sorted((o.ts for o in listed), reverse=True)
    assert len({o.request_id for o in listed}) == 12


async def test_tenant_b_sees_none_of_tenant_a_data(client):
    a, b = f"a-{new_id()[:8]}", f"b-{new_id()[:8]}"
    await client.call(llmops.LOG, {"operations": [op(cost=3.0)]}, ctx(a))
    await client.call(
        llmops.SET_BUDGET,
        {"scope": "tenant", "period": "day", "limit_usd": 10, "hard": True},
        ctx(a),
    )
    assert len(await stored(client, a, 1)) == 1
    assert await query_all(client, b) == []
    cost = await client.call(llmops.COST, window(), ctx(b))
    assert cost.total_cost == 0 and cost.rows == []
    m = await client.call(
        llmops.METRICS, {**window(), "bucket": "hour", "metrics": ["requests"]}, ctx(b)
    )
    assert m.buckets == []
    assert (await client.call(llmops.GET_BUDGETS, {}, ctx(b))).budgets == []
    # B setting "the same" budget makes B's own, leaving A's as it was.
    await client.call(
        llmops.SET_BUDGET,
        {"scope": "tenant", "period": "day", "limit_usd": 1, "hard": False},
        ctx(b),
    )
    mine = (await client.call(llmops.GET_BUDGETS, {}, ctx(a))).budgets
    assert [(x.limit_usd, x.hard, x.spent_usd) for x in mine] == [(10, True, 3.0)]


def _ten_years() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"from": (now - timedelta(days=3650)).isoformat(), "to": now.isoformat()}


@pytest.mark.parametrize(
    ("op_", "payload", "needle"),
    [
        (llmops.METRICS, {**_ten_years(), "bucket": "minute", "metrics": ["cost"]}, "buckets"),
        (llmops.METRICS, {**_ten_years(), "bucket": "hour", "metrics": ["cost"]}, "buckets"),
        (
            llmops.METRICS,
            {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z", "metrics": ["cost"]},
            "before",
        ),
        (llmops.METRICS, {**window(), "metrics": ["tokens_total"]}, "metrics"),
        (llmops.METRICS, {**window(), "metrics": ["cost"], "group_by": ["tenant"]}, "group_by"),
        (llmops.METRICS, {**window(), "metrics": []}, "metrics"),
        (llmops.QUERY, {**window(), "cursor": "not-a-cursor"}, "cursor"),
        (llmops.QUERY, {**window(), "limit": 100000}, "limit"),
        (llmops.QUERY, {"from": "yesterday", "to": "today"}, "from"),
        (llmops.COST, {"from": "2026-01-02T00:00:00", "to": "2026-01-03T00:00:00Z"}, "from"),
        (llmops.SET_BUDGET, {"scope": "user", "period": "day", "limit_usd": 5}, "user"),
        (llmops.SET_BUDGET, {"scope": "tenant", "period": "week", "limit_usd": 5}, "period"),
        (llmops.SET_BUDGET, {"scope": "tenant", "period": "day", "limit_usd": -1}, "limit_usd"),
        (llmops.LOG, {"operations": []}, "operations"),
        (llmops.LOG, {"operations": [op(ts="2001-01-01T00:00:00Z")]}, "outside"),
        (llmops.LOG, {"operations": [op(tokens_in=1, cached_tokens_read=5)]}, "cached"),
        (llmops.LOG, {"operations": [op(cost=float("nan"))]}, "cost"),
    ],
)
async def test_bad_input_is_invalid_request_with_a_reason(client, op_, payload, needle):
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InvalidRequest) as info:
        await client.call(op_, payload, ctx("acme"))
    assert needle in f"{info.value.message} {info.value.details}"
    assert loop.time() - started < 10  # refused up front, not after a long query


async def test_budget_alerts_fire_once_per_threshold(client, env):
    tenant = f"t-{new_id()[:8]}"
    sub = await env.js.subscribe(
        llmops.ALERT_SUBJECT, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
    )
    try:
        await client.call(
            llmops.SET_BUDGET,
            {"scope": "user", "user": "spender", "period": "month", "limit_usd": 1.0},
            ctx(tenant),
        )
        # 0.3, 0.6 (50 %), 0.9 (80 %), 1.2 (100 %), 1.5: each threshold exactly once.
        for i in range(5):
            await client.call(
                llmops.LOG, {"operations": [op(user="spender", cost=0.3)]}, ctx(tenant)
            )
            await stored(client, tenant, i + 1)
        await client.call(llmops.LOG, {"operations": [op(user="other", cost=5)]}, ctx(tenant))
        await stored(client, tenant, 6)
        seen: list[llmops.BudgetAlert] = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(4):
                while True:
                    msg = await sub.next_msg(timeout=4)
                    alert = llmops.BudgetAlert.model_validate(Codec().decode(msg.data)[1])
                    if alert.tenant == tenant:
                        seen.append(alert)
        assert sorted(a.threshold for a in seen) == [50, 80, 100]
        assert {a.user for a in seen} == {"spender"}
        budgets = (await client.call(llmops.GET_BUDGETS, {}, ctx(tenant))).budgets
        assert budgets[0].exhausted and math.isclose(budgets[0].spent_usd, 1.5)
        assert budgets[0].remaining_usd == 0
    finally:
        await sub.unsubscribe()
