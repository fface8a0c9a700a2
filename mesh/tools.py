"""What the CLI asks of a running mesh: discovery and one-off requests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats

from bus.client import Client
from bus.connection import connect_once
from bus.context import new_context
from bus.errors import MeshError
from bus.jetstream import ensure_streams

GATHER_S = 0.5


async def _gather(nc: Any, subject: str) -> list[dict[str, Any]]:
    """Collect every reply to a ``$SRV`` discovery request for ``GATHER_S`` seconds."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    replies: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + GATHER_S
    while (left := end - loop.time()) > 0:
        try:
            msg = await sub.next_msg(timeout=left)
        except nats.errors.TimeoutError:
            break
        replies.append(json.loads(msg.data))
    await sub.unsubscribe()
    return replies


async def services(
    url: str, *, user: str | None = None, password: str | None = None
) -> list[dict[str, Any]]:
    nc = await connect_once(url, "mesh-cli", user=user, password=password)
    try:
        infos = {i["id"]: i for i in await _gather(nc, "$SRV.INFO")}
        stats = {s["id"]: s for s in await _gather(nc, "$SRV.STATS")}
    finally:
        await nc.close()
    rows = []
    for sid, info in sorted(infos.items(), key=lambda kv: (kv[1]["name"], kv[0])):
        by_name = {e["name"]: e for e in stats.get(sid, {}).get("endpoints") or []}
        endpoints = []
        for ep in info.get("endpoints") or []:
            st = by_name.get(ep["name"], {})
            endpoints.append(
                {
                    "name": ep["name"],
                    "subject": ep["subject"],
                    "num_requests": st.get("num_requests", 0),
                    "num_errors": st.get("num_errors", 0),
                    "average_processing_time": st.get("average_processing_time", 0),
                    "last_error": st.get("last_error"),
                }
            )
        rows.append(
            {"name": info["name"], "id": sid, "version": info["version"], "endpoints": endpoints}
        )
    return rows


async def request(
    url: str,
    subject: str,
    payload: Any,
    *,
    tenant: str,
    user: str,
    timeout: float,
    nats_user: str | None = None,
    nats_password: str | None = None,
) -> tuple[str | None, Any]:
    """Send one request; return (error code or None, answer)."""
    nc = await connect_once(url, "mesh-cli", user=nats_user, password=nats_password)
    try:
        client = Client(nc)
        ctx = new_context(tenant, user=user, timeout=timeout)
        try:
            return None, await client.request(subject, payload, ctx)
        except MeshError as exc:
            return exc.code, {"error": exc.body().model_dump()}
    finally:
        await nc.close()


async def provision(url: str, *, user: str | None, password: str | None, replicas: int) -> None:
    """Create or update every stream and bucket (bus/jetstream.py) at ``replicas``."""
    nc = await connect_once(url, "mesh-provision", user=user, password=password)
    try:
        await ensure_streams(nc.jetstream(), replicas=replicas)
    finally:
        await nc.close()


async def probe(
    url: str,
    service: str,
    instance: str,
    *,
    user: str | None,
    password: str | None,
    timeout: float,
) -> str | None:
    """Ping one instance of ``service`` (``$SRV.PING.<service>.<id>``); None if it answered,
    else why not. Raises ``OSError``-like errors from connecting when NATS is unreachable."""
    nc = await connect_once(
        url, f"mesh-probe:{service}", user=user, password=password, timeout=timeout
    )
    try:
        try:
            msg = await nc.request(f"$SRV.PING.{service}.{instance}", b"", timeout=timeout)
        except nats.errors.NoRespondersError:
            return f"{service} instance {instance} is not subscribed"
        except nats.errors.TimeoutError:
            return f"{service} instance {instance} did not answer in {timeout}s"
        answer = json.loads(msg.data)
        if answer.get("id") != instance:
            return f"unexpected answer {answer!r}"
        return None
    finally:
        await nc.close()


async def upload(
    url: str,
    path: str,
    *,
    tenant: str,
    max_bytes: int,
    nats_user: str | None = None,
    nats_password: str | None = None,
) -> dict[str, Any]:
    """Stream a local file into the ``uploads`` object store as ``tenant``'s object."""
    from bus.uploads import put_stream

    nc = await connect_once(url, "mesh-upload", user=nats_user, password=nats_password)
    try:
        with open(path, "rb") as f:
            pieces = iter(lambda: f.read(128 * 1024), b"")
            stored = await put_stream(
                nc.jetstream(), tenant, pieces, max_bytes=max_bytes, filename=path.rsplit("/")[-1]
            )
        return stored.ref()
    finally:
        await nc.close()
