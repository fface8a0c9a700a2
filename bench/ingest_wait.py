"""Submit documents through ``ingestion.submit`` and wait until their jobs are indexed:
the end-to-end ingestion step of bench/bench_rag.py and bench/bench_rag_index.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bus.client import Client
from bus.context import new_context
from schemas import ingestion

#: Documents per ``ingestion.submit`` request.
BATCH = 50
#: How long one wait may take before the bench gives up.
WAIT_S = 1800.0
POLL_S = 0.2


async def submit_and_wait(
    client: Client,
    tenant: str,
    cid: str,
    documents: list[dict[str, Any]],
    total: int,
    *,
    timeout: float = 120.0,
) -> None:
    """Submit ``documents`` to collection ``cid`` in batches of ``BATCH``, then wait until
    ``total`` jobs of the collection are ``indexed`` (earlier submissions count). A failed
    job, or ``WAIT_S`` passing, ends the bench with ``SystemExit``. ``timeout`` bounds
    each request."""
    for start in range(0, len(documents), BATCH):
        await client.call(
            ingestion.SUBMIT,
            {"collection_id": cid, "documents": documents[start : start + BATCH]},
            new_context(tenant, timeout=timeout),
        )
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        indexed = await _count_indexed(client, tenant, cid, timeout)
        failed = await client.call(
            ingestion.LIST_JOBS,
            {"collection_id": cid, "status": "failed"},
            new_context(tenant, timeout=timeout),
        )
        if failed.jobs:
            raise SystemExit(f"jobs failed: {failed.jobs[0].error}")
        if indexed >= total:
            return
        await asyncio.sleep(POLL_S)
    raise SystemExit(f"ingestion did not finish in {WAIT_S / 60:.0f} minutes")


async def _count_indexed(client: Client, tenant: str, cid: str, timeout: float) -> int:
    """The collection's ``indexed`` jobs, every page of them."""
    count, cursor = 0, None
    while True:
        page = await client.call(
            ingestion.LIST_JOBS,
            {"collection_id": cid, "status": "indexed", "limit": 500, "cursor": cursor},
            new_context(tenant, timeout=timeout),
        )
        count += len(page.jobs)
        cursor = page.next_cursor
        if cursor is None:
            return count
