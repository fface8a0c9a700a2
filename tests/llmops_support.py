"""LLMOps test helpers: operations to log, and waiting until the consumer stored them."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bus.client import Client
from bus.context import new_context, new_id
from schemas import llmops
from schemas.context import Context
from workers.llmops.events import Row


def ctx(tenant: str, user: str | None = "u1", timeout: float = 20.0) -> Context:
    return new_context(tenant, user=user, timeout=timeout)


def op(**fields: Any) -> dict[str, Any]:
    """One operation for ``llmops.log`` (defaults: a 10/5-token ok call, now)."""
    base: dict[str, Any] = {
        "request_id": new_id(),
        "ts": datetime.now(UTC).isoformat(),
        "model": "gpt-x",
        "provider": "openai",
        "operation": "generate",
        "user": "u1",
        "status": "ok",
        "tokens_in": 10,
        "tokens_out": 5,
        "cost": 0.001,
        "latency_ms": 100.0,
    }
    base.update(fields)
    return base


def stored_row(tenant: str, ts: datetime, **fields: Any) -> Row:
    """One stored operation row for ``Store.ingest`` (defaults: a 1/1-token ok call of
    model ``m`` by user ``u`` taking 100 ms, free)."""
    base: dict[str, Any] = {
        "tenant_id": tenant,
        "ts": ts,
        "request_id": new_id(),
        "correlation_id": None,
        "model": "m",
        "provider": "p",
        "operation": "generate",
        "user_id": "u",
        "status": "ok",
        "error_code": None,
        "tokens_in": 1,
        "tokens_out": 1,
        "cached_read": None,
        "cached_write": None,
        "cost": 0.0,
        "latency_ms": 100.0,
        "ttft_ms": None,
    }
    base.update(fields)
    return Row(**base)


def window(minutes: float = 30) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "from": (now - timedelta(minutes=minutes)).isoformat(),
        "to": (now + timedelta(minutes=5)).isoformat(),
    }


async def stored(
    client: Client,
    tenant: str,
    n: int,
    *,
    filters: dict[str, Any] | None = None,
    timeout: float = 30.0,
    minutes: float = 30,
) -> list[llmops.LLMOperation]:
    """Wait until ``llmops.query`` lists at least ``n`` operations; return them all."""
    deadline = time.monotonic() + timeout
    while True:
        ops = await query_all(client, tenant, filters=filters, minutes=minutes)
        if len(ops) >= n or time.monotonic() > deadline:
            return ops
        await asyncio.sleep(0.2)


async def query_all(
    client: Client, tenant: str, *, filters: dict[str, Any] | None = None, minutes: float = 30
) -> list[llmops.LLMOperation]:
    out: list[llmops.LLMOperation] = []
    cursor = None
    while True:
        req: dict[str, Any] = {**window(minutes), "limit": 1000}
        if filters:
            req["filters"] = filters
        if cursor:
            req["cursor"] = cursor
        page = await client.call(llmops.QUERY, req, ctx(tenant))
        out += page.operations
        cursor = page.next_cursor
        if not cursor:
            return out
