"""A quick look from a terminal: ``mesh jobs``, ``mesh search``, ``mesh ask``.

Each runs one or two calls through the typed client (:class:`mesh.client.Mesh`) and
prints a table (``--json`` prints the response instead, for scripts). Collections are
named as people name them: ``--collection handbook`` finds the tenant's collection of
that name (a collection id works too).
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from bus.errors import InvalidRequest, NotFound
from mesh.client import Mesh
from schemas.ingestion import JobStatus
from schemas.rag import Collection, SearchMode

#: Longest passage text shown in a search result row.
SNIPPET_CHARS = 160
#: Collections listed per page while looking one up by name (the operation's maximum).
PAGE = 500


async def find_collection(mesh: Mesh, name: str) -> Collection | None:
    """The tenant's collection named ``name`` (or with that id), else ``None``."""
    cursor: str | None = None
    while True:
        page = await mesh.rag.list_collections(limit=PAGE, cursor=cursor)
        for collection in page.collections:
            if collection.name == name:
                return collection
        cursor = page.next_cursor
        if not cursor:
            break
    try:
        return await mesh.rag.get_collection(collection_id=name)
    except (NotFound, InvalidRequest):  # InvalidRequest: not even shaped like an id
        return None


async def require_collection(mesh: Mesh, name: str) -> Collection:
    found = await find_collection(mesh, name)
    if found is None:
        raise SystemExit(f"no collection named {name!r} for tenant {mesh.tenant!r}")
    return found


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1] + "…"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


async def jobs(
    mesh: Mesh,
    console: Console,
    *,
    collection: str | None,
    status: JobStatus | None,
    limit: int,
    as_json: bool,
) -> int:
    cid = (await require_collection(mesh, collection)).collection_id if collection else None
    listed = await mesh.ingestion.list_jobs(collection_id=cid, status=status, limit=limit)
    if as_json:
        _print_json(listed.model_dump(mode="json"))
        return 0
    table = Table(title=f"Ingestion jobs ({len(listed.jobs)}, newest first)")
    for column in ("job", "source", "status", "chunks", "updated", "error"):
        table.add_column(column, overflow="fold")
    for job in listed.jobs:
        table.add_row(
            job.job_id,
            job.source_id,
            job.status,
            "" if job.chunks is None else str(job.chunks),
            job.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
            job.error or "",
        )
    console.print(table)
    return 0


async def search(
    mesh: Mesh,
    console: Console,
    *,
    query: str,
    collection: str,
    top_k: int,
    mode: SearchMode,
    as_json: bool,
) -> int:
    cid = (await require_collection(mesh, collection)).collection_id
    found = await mesh.rag.search(collection_ids=[cid], query=query, top_k=top_k, mode=mode)
    if as_json:
        _print_json(found.model_dump(mode="json"))
        return 0
    table = Table(title=f"{len(found.results)} results for {query!r} ({mode})")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("source", overflow="fold")
    table.add_column("text", overflow="fold")
    for rank, hit in enumerate(found.results, 1):
        table.add_row(str(rank), f"{hit.score:.4f}", hit.source_id, _snippet(hit.text))
    console.print(table)
    return 0


async def ask(
    mesh: Mesh, console: Console, *, question: str, collection: str, top_k: int, as_json: bool
) -> int:
    cid = (await require_collection(mesh, collection)).collection_id
    answer = await mesh.rag.query(collection_ids=[cid], question=question, top_k=top_k)
    if as_json:
        _print_json(answer.model_dump(mode="json"))
        return 0
    console.print(answer.answer, markup=False, highlight=False)
    if answer.citations:
        table = Table(title="Citations")
        table.add_column("source", overflow="fold")
        table.add_column("quote", overflow="fold")
        for citation in answer.citations:
            table.add_row(citation.source_id, _snippet(citation.quote))
        console.print(table)
    return 0
