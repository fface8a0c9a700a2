"""Issue 10: a table of hostile inputs, one tenant per worker, sent while another tenant's
simple requests run. Every hostile request ends with a clear answer within its deadline,
and the other tenant's requests keep being answered all along.

Latency is recorded, not asserted beyond a generous bound (the machine is shared): the
figures printed at the end (run with ``-s``) are the ones in docs/security.md.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bus.client import Client
from bus.context import new_context
from bus.errors import MeshError
from bus.uploads import put_stream
from bus.worker import WorkerEnv
from mesh.runner import serving
from schemas.ingestion import Job, SubmitResponse
from tests.rag_support import create_collection

pytestmark = pytest.mark.timeout(600)

ATTACKER = f"mallory-{uuid.uuid4().hex[:6]}"
NEIGHBOUR = f"neighbour-{uuid.uuid4().hex[:6]}"
#: Each neighbour request must be answered within this (generous: the machine is shared).
NEIGHBOUR_BOUND_S = 15.0
SAMPLES = 80


def ctx(tenant: str, timeout: float = 30.0, roles: tuple[str, ...] = ()):
    return new_context(tenant, user="u", roles=roles, timeout=timeout)


@pytest.fixture(scope="module")
async def mesh(
    env: WorkerEnv, fake_gateway: Any, cache_worker: None, agent_worker: None
) -> AsyncIterator[None]:
    async with serving(["prompt", "ingestion", "rag"], env):
        yield


# -- the hostile table --------------------------------------------------------------


@dataclass
class Row:
    worker: str
    what: str
    deadline_s: float
    expect: str
    """A fragment of the error message (or of the job's outcome) that must appear."""
    run: Callable[[Client, WorkerEnv, str], Awaitable[str]]


async def _render(client: Client, name: str, template: str, variables: dict[str, Any]) -> str:
    await client.request(
        "prompt.create.request",
        {"name": name, "type": "text", "template": template},
        ctx(ATTACKER),
    )
    await client.request(
        "prompt.render.request", {"name": name, "variables": variables}, ctx(ATTACKER, 60)
    )
    return "rendered"


async def _job(client: Client, env: WorkerEnv, cid: str, filename: str, data: bytes) -> str:
    stored = await put_stream(env.js, ATTACKER, [data], max_bytes=10**8, filename=filename)
    out = await client.request(
        "ingestion.submit.request",
        {"collection_id": cid, "documents": [{"object": stored.ref()}]},
        ctx(ATTACKER),
        SubmitResponse,
    )
    job_id = out.jobs[0].job_id
    while True:
        job = await client.request(
            "ingestion.get_job.request", {"job_id": job_id}, ctx(ATTACKER), Job
        )
        if job.status in ("indexed", "failed"):
            return f"{job.status}: {job.error or ''}"
        await asyncio.sleep(0.25)


def _zip_bomb() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        with zf.open("word/document.xml", "w") as part:
            for _ in range(30):
                part.write(b"\0" * 1024 * 1024)
    return out.getvalue()


def _rows(cid: str) -> list[Row]:
    def n() -> str:
        return f"t{uuid.uuid4().hex[:8]}"

    return [
        Row(
            "prompt",
            "render burning CPU until the time limit",
            90,
            "time limit",
            lambda c, e, t: _render(
                c,
                n(),
                "{% for i in range(10000) %}{{ range(10000)|list|sort|sum }}{% endfor %}",
                {},
            ),
        ),
        Row(
            "prompt",
            "printf format of 400,000 open keys ('%(' * n)",
            90,
            "format requires a mapping",
            lambda c, e, t: _render(c, n(), "{{ t % 1 }}", {"t": "%(" * 400_000}),
        ),
        Row(
            "prompt",
            "printf output 2,000x its input ('%(a)s' * 2000)",
            90,
            "output limit",
            lambda c, e, t: _render(c, n(), "{{ ('%(a)s' * 2000) % {'a': x} }}", {"x": "y" * 1000}),
        ),
        Row(
            "prompt",
            "template nested 2,000 blocks deep",
            90,
            "template",
            lambda c, e, t: _render(c, n(), "{% if x %}" * 2000 + "{% endif %}" * 2000, {}),
        ),
        Row(
            "ingestion+rag",
            "Markdown heading followed by 200,000 spaces",
            120,
            "indexed",
            lambda c, e, t: _job(c, e, cid, "h.md", b"# a" + b" " * 200_000 + b"b\n\nbody"),
        ),
        Row(
            "ingestion",
            "5 MB of spaces without a newline",
            120,
            "indexed",
            lambda c, e, t: _job(c, e, cid, "s.txt", b"word" + b" " * 5_000_000 + b"end"),
        ),
        Row(
            "ingestion",
            "DOCX zip bomb (30 MiB from 30 KiB)",
            120,
            "zip bomb",
            lambda c, e, t: _job(c, e, cid, "bomb.docx", _zip_bomb()),
        ),
        Row(
            "ingestion",
            "an executable named .txt",
            120,
            "binary content",
            lambda c, e, t: _job(c, e, cid, "x.txt", b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 4096),
        ),
        Row(
            "cache",
            "plant an agent run result in the agent's namespace",
            90,
            "reserved",
            lambda c, e, t: c.request(
                "cache.set.request",
                {"namespace": "_agent", "key": "run:agt-x:v1:0", "value": {"answer": "pwned"}},
                ctx(ATTACKER),
            ),
        ),
        Row(
            "agent",
            "tool schema with a $ref to a local file",
            90,
            "own definitions",
            lambda c, e, t: c.request(
                "agent.create_tool.request",
                {
                    "name": n(),
                    "description": "d",
                    "parameters": {
                        "type": "object",
                        "properties": {"x": {"$ref": "file:///etc/passwd"}},
                    },
                    "implementation": {"kind": "builtin", "builtin": "calculator"},
                },
                ctx(ATTACKER, roles=("tools:write",)),
            ),
        ),
    ]


# -- the neighbour ----------------------------------------------------------------------


async def _neighbour_requests(client: Client) -> list[Callable[[], Awaitable[Any]]]:
    await client.request(
        "prompt.create.request",
        {"name": "greet", "type": "text", "template": "Hello {{ name }}"},
        ctx(NEIGHBOUR),
    )
    await client.request("cache.set.request", {"key": "k", "value": {"v": 1}}, ctx(NEIGHBOUR))
    return [
        lambda: client.request(
            "prompt.render.request", {"name": "greet", "variables": {"name": "Ann"}}, ctx(NEIGHBOUR)
        ),
        lambda: client.request("cache.get.request", {"key": "k"}, ctx(NEIGHBOUR)),
        lambda: client.request("ingestion.list_jobs.request", {}, ctx(NEIGHBOUR)),
        lambda: client.request("agent.list.request", {}, ctx(NEIGHBOUR)),
        lambda: client.request("rag.list_collections.request", {}, ctx(NEIGHBOUR)),
    ]


async def _measure(
    calls: list[Callable[[], Awaitable[Any]]], until: Callable[[], bool]
) -> list[float]:
    """Neighbour requests one after another (round robin) until ``until()`` and at least
    SAMPLES of them; each must succeed within NEIGHBOUR_BOUND_S."""
    times: list[float] = []
    i = 0
    while len(times) < SAMPLES or not until():
        started = time.perf_counter()
        async with asyncio.timeout(NEIGHBOUR_BOUND_S):
            await calls[i % len(calls)]()
        times.append(time.perf_counter() - started)
        i += 1
    return times


def _p99(times: list[float]) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[98]


async def test_hostile_inputs_end_clearly_while_the_neighbour_is_served(
    env: WorkerEnv, client: Client, mesh: None
):
    cid = await create_collection(client, ATTACKER)
    rows = _rows(cid)
    calls = await _neighbour_requests(client)
    idle = await _measure(calls, lambda: True)

    outcomes: dict[int, tuple[str, float]] = {}

    async def attack(index: int, row: Row) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(row.deadline_s):
                outcome = await row.run(client, env, ATTACKER)
        except MeshError as exc:
            outcome = f"{exc.code}: {exc.message}"
        except TimeoutError:
            outcome = "NO ANSWER within the deadline"
        outcomes[index] = (outcome, time.monotonic() - started)

    attacks = [asyncio.create_task(attack(i, row)) for i, row in enumerate(rows)]
    busy = await _measure(calls, lambda: all(t.done() for t in attacks))
    await asyncio.gather(*attacks)

    lines = [
        f"neighbour p50/p99/max idle: {statistics.median(idle) * 1000:.1f} / "
        f"{_p99(idle) * 1000:.1f} / {max(idle) * 1000:.1f} ms ({len(idle)} requests)",
        f"neighbour p50/p99/max under attack: {statistics.median(busy) * 1000:.1f} / "
        f"{_p99(busy) * 1000:.1f} / {max(busy) * 1000:.1f} ms ({len(busy)} requests)",
    ]
    for i, row in enumerate(rows):
        outcome, took = outcomes[i]
        lines.append(f"| {row.worker} | {row.what} | {outcome[:90]} | {took:.1f} s |")
    print("\n" + "\n".join(lines))

    for i, row in enumerate(rows):
        outcome, took = outcomes[i]
        assert row.expect in outcome, f"{row.what}: {outcome}"
        assert took < row.deadline_s
