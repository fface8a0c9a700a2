"""A 3-node JetStream cluster on ``deploy/nats/nats-server.conf`` survives the loss of a node.

Three nats-server processes on loopback ports (the production file unchanged, ports moved
on the command line), streams and the object store at R3 created by ``mesh provision``'s
code as the ``provision`` user, and ingestion, RAG, cache and a scripted gateway each as
its own user with all three server URLs. While 200 documents are ingested and cache
requests run, the node leading the INGEST stream is SIGKILLed and later restarted.

The promise shown: every job whose submit was acknowledged is indexed exactly once (one
document and one chunk per source id, no job lost or failed), requests keep succeeding
through the other nodes (the error window is measured and printed), the consumers
resume, and the restarted node catches up. Each node fsyncs every write before it
acknowledges it (``sync_interval: always``, docs/deploy.md "Durability"); a SIGKILL of
one process keeps its page cache, so this test shows the cluster's failover, and the
``sync_always`` check shows the setting that protects against power loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest

from bus.client import Client
from bus.connection import RECONNECT_WAIT_S
from bus.context import new_context
from bus.errors import RetryableError
from bus.settings import Settings
from mesh.infra import free_port
from mesh.runner import bus_env, serving
from mesh.tools import provision
from schemas.ingestion import Job
from tests.deploy_support import ClusterNode, mint_passwords
from tests.fake_gateway import FakeGateway

# method="thread": a hang in teardown (connections draining towards a killed node) ends
# the run with every thread's stack instead of stalling it.
pytestmark = pytest.mark.timeout(420, method="thread")

DOCUMENTS = 200
BATCH = 10
#: How long the killed node stays down.
DOWN_S = 8.0


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return mint_passwords()


@pytest.fixture(scope="module")
def cluster(passwords: dict[str, str], tmp_path_factory) -> Iterator[list[ClusterNode]]:
    base = tmp_path_factory.mktemp("cluster")
    ports = tuple(free_port() for _ in range(3))
    nodes = [
        ClusterNode(base / f"n{i}", index=i, cluster_ports=ports, passwords=passwords)
        for i in range(3)
    ]
    try:
        for node in nodes:
            node.start()
        _wait(lambda: all(_meta_leader(n) for n in nodes), "a JetStream meta leader", 60)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _meta_leader(node: ClusterNode) -> str | None:
    with contextlib.suppress(Exception):
        return node.monitor("/jsz").get("meta_cluster", {}).get("leader") or None
    return None


def _wait(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.2)


def _urls(nodes: list[ClusterNode]) -> str:
    return ",".join(n.url for n in nodes)


def _as(base: Settings, url: str, user: str, passwords: dict[str, str]) -> Settings:
    return base.model_copy(
        update={
            "nats_url": url,
            "nats_user": user,
            "nats_password": passwords[user],
            "jetstream_provision": False,
            "jetstream_replicas": 3,
            "log_level": "warning",
        }
    )


@dataclass
class Mesh:
    client: Client
    gateway: FakeGateway
    js: Any
    passwords: dict[str, str]


@pytest.fixture(scope="module")
async def mesh(
    cluster: list[ClusterNode], settings: Settings, passwords: dict[str, str]
) -> AsyncIterator[Mesh]:
    url = _urls(cluster)
    await provision(url, user="provision", password=passwords["provision"], replicas=3)
    gateway = FakeGateway()
    async with contextlib.AsyncExitStack() as stack:
        env = await stack.enter_async_context(
            bus_env(_as(settings, url, "gateway", passwords), "gateway")
        )
        await stack.enter_async_context(gateway.worker().serve(env.nc))
        for name in ("cache", "ingestion", "rag"):
            env = await stack.enter_async_context(
                bus_env(_as(settings, url, name, passwords), name)
            )
            await stack.enter_async_context(serving([name], env))
        caller = await stack.enter_async_context(
            bus_env(_as(settings, url, "bridge", passwords), "bridge")
        )
        admin = await stack.enter_async_context(
            bus_env(_as(settings, url, "admin", passwords), "admin")
        )
        yield Mesh(caller.client, gateway, admin.js, passwords)


@dataclass
class Traffic:
    """Cache requests in a loop; every outcome with its time."""

    client: Client
    tenant: str
    outcomes: list[tuple[float, bool]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            ctx = new_context(self.tenant, user="load", timeout=2.0)
            try:
                await self.client.request(
                    "cache.set.request", {"key": f"k{i % 50}", "value": str(i)}, ctx
                )
                got = await self.client.request("cache.get.request", {"key": f"k{i % 50}"}, ctx)
                ok = got.get("value") == str(i)
            except RetryableError:
                ok = False
            self.outcomes.append((time.monotonic(), ok))
            await asyncio.sleep(0.02)

    def window(self) -> tuple[int, float]:
        """(failed requests, seconds from the first failure to the last)."""
        failed = [t for t, ok in self.outcomes if not ok]
        return len(failed), (failed[-1] - failed[0]) if failed else 0.0


async def _submit(client: Client, tenant: str, collection: str, batch: int) -> list[str]:
    """Submit one batch until it is acknowledged (a retry of the same source ids is safe:
    re-submitting a source id replaces its document)."""
    docs = [
        {"source_id": f"doc-{n:03d}", "text": f"Document {n} is about topic {n % 17}."}
        for n in range(batch * BATCH, (batch + 1) * BATCH)
    ]
    deadline = time.monotonic() + 120
    while True:
        try:
            out = await client.request(
                "ingestion.submit.request",
                {"collection_id": collection, "documents": docs},
                new_context(tenant, user="ingest", timeout=10.0),
            )
            return [j["job_id"] for j in out["jobs"]]
        except RetryableError:
            assert time.monotonic() < deadline, "submit never acknowledged"
            await asyncio.sleep(0.5)


async def _wait_jobs(client: Client, tenant: str, job_ids: list[str]) -> dict[str, Job]:
    done: dict[str, Job] = {}
    deadline = time.monotonic() + 240
    while len(done) < len(job_ids):
        for job_id in job_ids:
            if job_id in done:
                continue
            try:
                job = Job.model_validate(
                    await client.request(
                        "ingestion.get_job.request",
                        {"job_id": job_id},
                        new_context(tenant, user="ingest", timeout=5.0),
                    )
                )
            except RetryableError:
                continue
            if job.status in ("indexed", "failed"):
                done[job_id] = job
        assert time.monotonic() < deadline, f"{len(job_ids) - len(done)} jobs not finished"
        await asyncio.sleep(0.5)
    return done


def _leader(info: Any) -> str:
    return str(info.cluster.leader)


def test_every_node_fsyncs_each_write_before_acknowledging_it(cluster: list[ClusterNode]):
    for node in cluster:
        config = node.monitor("/varz")["jetstream"]["config"]
        assert config["sync_always"] is True


async def test_streams_are_replicated_on_all_three_nodes(mesh: Mesh):
    for stream in ("INGEST", "EVENTS", "LLMOPS", "AGENT_RUNS", "OBJ_uploads"):
        info = await mesh.js.stream_info(stream)
        assert info.config.num_replicas == 3
        assert len(info.cluster.replicas) == 2  # and the leader


async def test_a_node_loss_loses_no_acknowledged_job_and_requests_fail_over(
    cluster: list[ClusterNode], mesh: Mesh, capsys: pytest.CaptureFixture[str]
):
    tenant = f"cl-{uuid.uuid4().hex[:6]}"
    created = await mesh.client.request(
        "rag.create_collection.request",
        {"name": "cluster"},
        new_context(tenant, user="ingest", timeout=10.0),
    )
    collection = created["collection_id"]
    # The node leading INGEST will be killed: its stream and consumers must move. The
    # request traffic goes through it first, so its clients must fail over too.
    leader = _leader(await mesh.js.stream_info("INGEST"))
    victim = next(n for n in cluster if n.server_name == leader)
    others = [n for n in cluster if n is not victim]
    traffic_nc = await nats.connect(
        [victim.url, *(n.url for n in others)],
        user="bridge",
        password=mesh.passwords["bridge"],
        inbox_prefix="_INBOX.bridge",
        dont_randomize=True,
        reconnect_time_wait=RECONNECT_WAIT_S,
        max_reconnect_attempts=-1,
    )
    assert traffic_nc.connected_url is not None
    assert traffic_nc.connected_url.port == victim.port
    traffic = Traffic(Client(traffic_nc), tenant)
    stop = asyncio.Event()
    batches = DOCUMENTS // BATCH
    job_ids: list[str] = []
    async with asyncio.TaskGroup() as tg:
        load = tg.create_task(traffic.run(stop))
        for b in range(batches // 2):
            job_ids += await _submit(mesh.client, tenant, collection, b)
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        victim.proc = None
        killed_at = time.monotonic()
        for b in range(batches // 2, batches):
            job_ids += await _submit(mesh.client, tenant, collection, b)
        await asyncio.sleep(max(0.0, DOWN_S - (time.monotonic() - killed_at)))
        await asyncio.to_thread(victim.start)
        restarted_at = time.monotonic()
        jobs = await _wait_jobs(mesh.client, tenant, job_ids)
        stop.set()
        await load
    await traffic_nc.close()

    # Every acknowledged job indexed, once.
    assert len(job_ids) == DOCUMENTS == len(set(job_ids))
    assert {j.status for j in jobs.values()} == {"indexed"}, [
        (j.source_id, j.status, j.error) for j in jobs.values() if j.status != "indexed"
    ][:5]
    summary = await mesh.client.request(
        "rag.get_collection.request",
        {"collection_id": collection},
        new_context(tenant, user="ingest", timeout=10.0),
    )
    assert (summary["document_count"], summary["chunk_count"]) == (DOCUMENTS, DOCUMENTS)
    sources: list[str] = []
    cursor = None
    while True:
        page = await mesh.client.request(
            "rag.list_documents.request",
            {"collection_id": collection, "limit": 500, "cursor": cursor},
            new_context(tenant, user="ingest", timeout=10.0),
        )
        sources += [d["source_id"] for d in page["documents"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert sorted(sources) == [f"doc-{n:03d}" for n in range(DOCUMENTS)]

    # Requests kept succeeding through the other nodes.
    failed, window = traffic.window()
    # How long the killed node's client went without an answer: the kill to its next success.
    after_kill = [t for t, ok in traffic.outcomes if ok and t > killed_at]
    gap = after_kill[0] - killed_at if after_kill else float("inf")
    total = len(traffic.outcomes)
    after = [ok for t, ok in traffic.outcomes if t > restarted_at]
    with capsys.disabled():  # the figures belong in every run's output
        print(
            f"\ncluster: {total} request pairs through the killed node's client, {failed} "
            f"failed, error window {window:.2f}s, first success {gap:.2f}s after the kill "
            f"(node {leader} down {DOWN_S:.0f}s); "
            f"{mesh.gateway.embed_calls} embed calls for {DOCUMENTS} documents + 1 probe"
        )
    assert total > 0 and failed < total / 4
    assert gap < DOWN_S  # served by the other nodes while the node was down
    assert after and all(after[-20:])  # and succeed after the restart

    # The restarted node caught up: every replica of INGEST is current again.
    def current() -> bool:
        with contextlib.suppress(Exception):
            streams = victim.monitor("/jsz?streams=true")["account_details"]
            return any(
                s["name"] == "INGEST" for acc in streams for s in acc.get("stream_detail") or []
            )
        return False

    await asyncio.to_thread(_wait, current, "INGEST on the restarted node", 60)
    info = await mesh.js.stream_info("INGEST")
    assert all(r.current for r in info.cluster.replicas)
