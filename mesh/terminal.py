"""The ``mesh`` subcommands that work on a tenant's data: ``ingest``, ``jobs``, ``search``,
``ask`` (mesh/ingest.py, mesh/lookup.py). Registered on the CLI's parser by
:func:`add_commands`; heavy imports wait until a command runs."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from typing import Any, get_args

from bus.telemetry import setup_logging
from gateway_bridge.settings import BridgeSettings
from schemas.ingestion import JobStatus
from schemas.rag import SearchMode

#: How long ``mesh ingest`` follows the jobs by default (seconds).
DEFAULT_WAIT_S = 600.0


def add_commands(sub: Any, func: Callable[[argparse.Namespace], None]) -> None:
    """Add the commands to ``sub`` (argparse's subparsers), each running ``func``."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--tenant",
            default=os.environ.get("MESH_TENANT"),
            help="tenant to act as (default: $MESH_TENANT)",
        )
        p.add_argument("--user", default="cli")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.add_argument("--timeout", type=float, default=60.0, help="deadline per call (s)")
        p.set_defaults(func=func)

    i = sub.add_parser(
        "ingest",
        help="upload files or folders into a RAG collection and follow them until indexed",
    )
    i.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")
    i.add_argument("--collection", required=True, help="collection name (created if missing)")
    i.add_argument(
        "--include", action="append", default=[], metavar="GLOB", help="only matching files"
    )
    i.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB", help="skip matching files"
    )
    i.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT_S,
        help="seconds to follow the jobs (0: upload and submit only)",
    )
    common(i)
    i.set_defaults(action="ingest")

    j = sub.add_parser("jobs", help="ingestion jobs, newest first")
    j.add_argument("--collection", help="only this collection")
    j.add_argument("--status", choices=get_args(JobStatus))
    j.add_argument("--limit", type=int, default=20)
    common(j)
    j.set_defaults(action="jobs")

    s = sub.add_parser("search", help="search a collection")
    s.add_argument("query")
    s.add_argument("--collection", required=True)
    s.add_argument("--top-k", type=int, default=5)
    s.add_argument("--mode", choices=get_args(SearchMode), default="hybrid")
    common(s)
    s.set_defaults(action="search")

    a = sub.add_parser("ask", help="answer a question from a collection, with citations")
    a.add_argument("question")
    a.add_argument("--collection", required=True)
    a.add_argument("--top-k", type=int, default=5)
    common(a)
    a.set_defaults(action="ask")


def run(args: argparse.Namespace, nats_url: str, settings: BridgeSettings) -> int:
    """Run one of the commands; the exit status."""
    if not args.tenant:
        raise SystemExit("give --tenant (or set MESH_TENANT)")
    if "LOG_LEVEL" not in os.environ:  # the tables are the output: log only errors
        setup_logging("error", settings.log_format)
    try:
        return asyncio.run(_run(args, nats_url, settings))
    except KeyboardInterrupt:
        # Submitted jobs carry on in the mesh: nothing acknowledged is lost.
        print("interrupted; submitted files are still being ingested (see `mesh jobs`)")
        return 130


async def _run(args: argparse.Namespace, nats_url: str, settings: BridgeSettings) -> int:
    from rich.console import Console

    from bus.errors import MeshError
    from mesh import ingest, lookup
    from mesh.client import Mesh

    out = Console(soft_wrap=False)
    err = Console(stderr=True)
    async with Mesh.connect(
        nats_url,
        tenant=args.tenant,
        user=args.user,
        timeout=args.timeout,
        codec=settings.codec_type,
        name="mesh-cli",
    ) as mesh:
        try:
            if args.action == "ingest":
                files = ingest.find_files(args.paths, args.include, args.exclude)
                command = ingest.Ingest(
                    mesh,
                    mesh.client.nc.jetstream(),
                    err,
                    max_bytes=settings.upload_max_bytes,
                    wait=args.wait,
                    show_progress=not args.json,
                )
                results = await command.run(files, args.collection)
                if args.json:
                    print(ingest.summary_json(results))
                else:
                    out.print(ingest.summary_table(results))
                return ingest.exit_code(results, followed=args.wait != 0)
            if args.action == "jobs":
                return await lookup.jobs(
                    mesh,
                    out,
                    collection=args.collection,
                    status=args.status,
                    limit=args.limit,
                    as_json=args.json,
                )
            if args.action == "search":
                return await lookup.search(
                    mesh,
                    out,
                    query=args.query,
                    collection=args.collection,
                    top_k=args.top_k,
                    mode=args.mode,
                    as_json=args.json,
                )
            return await lookup.ask(
                mesh,
                out,
                question=args.question,
                collection=args.collection,
                top_k=args.top_k,
                as_json=args.json,
            )
        except MeshError as exc:
            err.print(f"[red]{exc.code}[/red]: {exc.message}", highlight=False)
            return 1
