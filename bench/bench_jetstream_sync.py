"""What `sync_interval: always` costs: JetStream publishes on a 3-node R3 cluster running
deploy/nats/nats-server.conf, against the same cluster with NATS's default sync (every
2 minutes), in the same run on the same disk.

    .venv/bin/python bench/bench_jetstream_sync.py [--messages 2000] [--inflight 64]

Prints acknowledged publishes per second, one at a time (each waits for its ack: the
latency a job submit sees) and with many in flight (throughput), for both policies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats  # noqa: E402
from nats.js import api  # noqa: E402

from mesh.infra import free_port  # noqa: E402
from tests.deploy_support import AUTH_CONF, SERVER_CONF, ClusterNode, mint_passwords  # noqa: E402

PAYLOAD = b"x" * 1024


@contextlib.contextmanager
def cluster(base: Path, sync_always: bool, passwords: dict[str, str]) -> Iterator[list[str]]:
    conf_dir = base / "conf"
    conf_dir.mkdir(parents=True)
    text = SERVER_CONF.read_text()
    if not sync_always:
        text = text.replace("sync_interval: always", "")
    (conf_dir / "nats-server.conf").write_text(text)
    shutil.copy(AUTH_CONF, conf_dir / "nats-auth.conf")
    ports = tuple(free_port() for _ in range(3))
    nodes = [
        ClusterNode(
            base / f"n{i}",
            index=i,
            cluster_ports=ports,
            passwords=passwords,
            config=conf_dir / "nats-server.conf",
        )
        for i in range(3)
    ]
    try:
        for node in nodes:
            node.start()
        deadline = time.monotonic() + 60
        while not all(_leader(n) for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("no JetStream meta leader")
            time.sleep(0.2)
        yield [n.url for n in nodes]
    finally:
        for node in nodes:
            node.stop()


def _leader(node: ClusterNode) -> bool:
    with contextlib.suppress(Exception):
        return bool(node.monitor("/jsz").get("meta_cluster", {}).get("leader"))
    return False


async def measure(
    urls: list[str], password: str, messages: int, inflight: int
) -> tuple[float, float]:
    nc = await nats.connect(urls, user="admin", password=password)
    js = nc.jetstream()
    await js.add_stream(
        api.StreamConfig(
            name="BENCH", subjects=["bench.>"], num_replicas=3, storage=api.StorageType.FILE
        )
    )
    await js.publish("bench.warm", PAYLOAD)
    one = max(messages // 10, 50)
    start = time.perf_counter()
    for i in range(one):
        await js.publish(f"bench.one.{i}", PAYLOAD)
    sequential = one / (time.perf_counter() - start)
    slots = asyncio.Semaphore(inflight)

    async def send(i: int) -> None:
        async with slots:
            await js.publish(f"bench.many.{i}", PAYLOAD, timeout=30)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(messages):
            tg.create_task(send(i))
    concurrent = messages / (time.perf_counter() - start)
    await nc.close()
    return sequential, concurrent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--inflight", type=int, default=64)
    args = p.parse_args()
    passwords = mint_passwords()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        for always in (False, True):
            label = "sync always" if always else "default sync (2 min)"
            with cluster(Path(tmp) / label.split()[0], always, passwords) as urls:
                results[label] = asyncio.run(
                    measure(urls, passwords["admin"], args.messages, args.inflight)
                )
    for label, (seq, conc) in results.items():
        print(f"{label:<22} one at a time {seq:8.0f}/s   {args.inflight} in flight {conc:8.0f}/s")
    (bs, bc), (s, c) = results.values()
    print(f"ratio always/default: one at a time {s / bs:.2f}, in flight {c / bc:.2f}")


if __name__ == "__main__":
    main()
