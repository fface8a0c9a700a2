"""``mesh ingest PATH... --collection NAME``: files and folders into a RAG collection.

The same path as the bridge's upload route (docs/services/ingestion.md): each file is
streamed into the object store bucket ``uploads`` (``bus.uploads.put_stream``, owned by
the tenant), then ``ingestion.submit`` turns each into a job that ingestion parses and
RAG chunks, embeds and indexes. The command shows the bytes uploaded, then the jobs per
stage until each is ``indexed`` or ``failed``, and prints one row per file with the
reason of each failure. It exits 1 if any file failed (or had not finished by
``--wait``), 0 otherwise.

Safe to re-run: a file's ``source_id`` is its path relative to the folder given (its
name, for a file given directly), and its SHA-256 is stored in the document's metadata
(``sha256``); a file whose document already carries the same digest is reported
``unchanged`` and neither uploaded nor submitted. A changed file replaces its document
(RAG upserts on the source id). A file that failed before is tried again.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import mimetypes
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from nats.js import JetStreamContext
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from bus.errors import MeshError
from bus.uploads import CHUNK_SIZE, StoredObject, delete_object, put_stream
from mesh.client import Mesh
from mesh.lookup import find_collection
from schemas.ingestion import MAX_BATCH, STAGES, Job

#: Metadata key holding the file's SHA-256 (how a re-run recognises unchanged files).
DIGEST_KEY = "sha256"
#: Seconds between two looks at the jobs while following them.
POLL_S = 0.5
#: Jobs listed per page while following them (the operation's maximum).
JOBS_PAGE = 500
TERMINAL = ("indexed", "failed")


@dataclass
class FileResult:
    """One file's outcome, as the summary shows it."""

    path: str
    source_id: str
    size: int
    status: str = "pending"
    """``indexed``, ``unchanged``, ``failed``, or the stage it was in when ``--wait`` ran out."""
    reason: str = ""
    chunks: int | None = None
    job_id: str | None = None
    sha256: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("indexed", "unchanged")


@dataclass(frozen=True)
class Found:
    path: Path
    source_id: str


# ---------------------------------------------------------------- finding files


def find_files(
    paths: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Found]:
    """Every file under ``paths``, with its source id; hidden files and folders are
    skipped unless an ``include`` pattern names them. Patterns match the path relative to
    the folder given (``*`` crosses ``/``) or the file name."""
    found: list[Found] = []
    for raw in paths:
        root = Path(raw)
        if root.is_file():
            found.append(Found(root, root.name))
            continue
        if not root.is_dir():
            raise SystemExit(f"no such file or folder: {raw}")
        for folder, dirs, files in os.walk(root):  # symlinked folders are not followed
            dirs.sort()
            for name in sorted(files):
                path = Path(folder) / name
                rel = path.relative_to(root).as_posix()
                if _wanted(rel, include, exclude) and path.is_file():
                    found.append(Found(path, rel))
    seen: dict[str, Path] = {}
    for f in found:
        if f.source_id in seen and seen[f.source_id] != f.path:
            raise SystemExit(
                f"{seen[f.source_id]} and {f.path} would both be {f.source_id!r} in the "
                "collection; ingest them in separate runs or rename one"
            )
        seen[f.source_id] = f.path
    return list({f.source_id: f for f in found}.values())


def _wanted(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]

    def matches(patterns: Iterable[str]) -> bool:
        return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)

    if include:
        if not matches(include):
            return False
    elif any(part.startswith(".") for part in rel.split("/")):
        return False
    return not matches(exclude)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(1024 * 1024):
            digest.update(piece)
    return digest.hexdigest()


async def _pieces(path: Path, advance: Callable[[int], None]) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while piece := await asyncio.to_thread(f.read, CHUNK_SIZE):
            advance(len(piece))
            yield piece


# ---------------------------------------------------------------- the command


class Ingest:
    def __init__(
        self,
        mesh: Mesh,
        js: JetStreamContext,
        console: Console,
        *,
        max_bytes: int,
        wait: float | None,
        show_progress: bool = True,
    ) -> None:
        self.mesh = mesh
        self.js = js
        self.console = console
        self.max_bytes = max_bytes
        self.wait = wait
        self.show_progress = show_progress

    async def run(self, files: list[Found], collection: str) -> list[FileResult]:
        cid = await self._collection(collection)
        known = await self._digests(cid)
        results: list[FileResult] = []
        for f in files:
            r = FileResult(str(f.path), f.source_id, 0)
            results.append(r)
            try:
                r.size = f.path.stat().st_size
                r.sha256 = await _digest(f.path)
            except OSError as exc:
                r.status, r.reason = "failed", f"cannot read the file: {exc.strerror or exc}"
                continue
            if known.get(f.source_id) == r.sha256:
                r.status = "unchanged"
            elif r.size > self.max_bytes:
                r.status = "failed"
                r.reason = f"payload_too_large: file exceeds the {self.max_bytes}-byte upload limit"
        todo = [r for r in results if r.status == "pending"]
        with self._progress() as progress:
            uploaded = await self._upload(todo, progress)
            await self._submit(cid, uploaded)
            if self.wait != 0:
                await self._follow(cid, [r for r in todo if r.job_id], progress)
        return results

    # -- steps ---------------------------------------------------------------------------

    async def _collection(self, name: str) -> str:
        found = await find_collection(self.mesh, name)
        if found is not None:
            return found.collection_id
        created = await self.mesh.rag.create_collection(name=name)
        self.console.print(f"created collection {name!r} ({created.collection_id})")
        return created.collection_id

    async def _digests(self, cid: str) -> dict[str, str]:
        """Source id → the SHA-256 recorded when it was ingested by this command."""
        digests: dict[str, str] = {}
        cursor: str | None = None
        while True:
            page = await self.mesh.rag.list_documents(
                collection_id=cid, limit=JOBS_PAGE, cursor=cursor
            )
            for doc in page.documents:
                value = doc.metadata.get(DIGEST_KEY)
                if isinstance(value, str):
                    digests[doc.source_id] = value
            cursor = page.next_cursor
            if not cursor:
                return digests

    async def _upload(
        self, todo: list[FileResult], progress: Progress
    ) -> list[tuple[FileResult, StoredObject]]:
        total = sum(r.size for r in todo)
        task = progress.add_task("uploading", total=total or None, visible=bool(todo))
        tenant = self.mesh.tenant
        assert tenant is not None
        stored: list[tuple[FileResult, StoredObject]] = []
        for r in todo:
            name = Path(r.path).name
            progress.update(task, description=f"uploading {name}")
            try:
                obj = await put_stream(
                    self.js,
                    tenant,
                    _pieces(Path(r.path), lambda n: progress.advance(task, n)),
                    max_bytes=self.max_bytes,
                    filename=name,
                    content_type=mimetypes.guess_type(name)[0],
                )
            except MeshError as exc:
                r.status, r.reason = "failed", f"{exc.code}: {exc.message}"
                continue
            except OSError as exc:
                r.status, r.reason = "failed", f"cannot read the file: {exc.strerror or exc}"
                continue
            stored.append((r, obj))
        progress.update(task, description="uploaded", completed=total)
        return stored

    async def _submit(self, cid: str, stored: list[tuple[FileResult, StoredObject]]) -> None:
        for start in range(0, len(stored), MAX_BATCH):
            batch = stored[start : start + MAX_BATCH]
            documents = [
                {
                    "source_id": r.source_id,
                    "object": obj.ref(),
                    "metadata": {DIGEST_KEY: r.sha256},
                }
                for r, obj in batch
            ]
            try:
                submitted = await self.mesh.ingestion.submit(collection_id=cid, documents=documents)
            except MeshError as exc:
                for r, obj in batch:
                    r.status, r.reason = "failed", f"{exc.code}: {exc.message}"
                    await _discard(self.js, obj, self.mesh.tenant)
                continue
            for (r, _), ref in zip(batch, submitted.jobs, strict=True):
                r.job_id, r.status = ref.job_id, ref.status

    async def _follow(self, cid: str, pending: list[FileResult], progress: Progress) -> None:
        """Poll the jobs until each is indexed or failed, or ``wait`` seconds pass."""
        if not pending:
            return
        by_job = {r.job_id: r for r in pending}
        task = progress.add_task("indexing", total=len(pending))
        give_up = None if self.wait is None else time.monotonic() + self.wait
        while True:
            for job in await self._jobs(cid, set(by_job)):
                r = by_job[job.job_id]
                r.status, r.chunks = job.status, job.chunks
                if job.status == "failed":
                    r.reason = job.error or "failed"
            counts = Counter(r.status for r in pending)
            done = counts["indexed"] + counts["failed"]
            stages = " · ".join(f"{s} {counts[s]}" for s in (*STAGES, "failed") if counts[s])
            progress.update(task, completed=done, description=f"indexing  {stages}")
            if done == len(pending):
                return
            if give_up is not None and time.monotonic() >= give_up:
                for r in pending:
                    if r.status not in TERMINAL:
                        r.reason = f"still {r.status} after {self.wait:g} s (see `mesh jobs`)"
                return
            await asyncio.sleep(POLL_S)

    async def _jobs(self, cid: str, wanted: set[str | None]) -> list[Job]:
        """Our jobs' current rows: pages of the collection's jobs (newest first) until all
        are seen, then one by one for any older than those pages."""
        seen: list[Job] = []
        cursor: str | None = None
        missing = set(wanted)
        while missing:
            page = await self.mesh.ingestion.list_jobs(
                collection_id=cid, limit=JOBS_PAGE, cursor=cursor
            )
            for job in page.jobs:
                if job.job_id in missing:
                    seen.append(job)
                    missing.discard(job.job_id)
            cursor = page.next_cursor
            if not cursor:
                break
        for job_id in missing:
            if job_id is not None:
                seen.append(await self.mesh.ingestion.get_job(job_id=job_id))
        return seen

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.show_progress,
        )


async def _digest(path: Path) -> str:
    return await asyncio.to_thread(_sha256, path)


async def _discard(js: JetStreamContext, obj: StoredObject, tenant: str | None) -> None:
    if tenant is None:
        return
    try:
        await delete_object(js, obj.name, tenant)
    except MeshError:
        pass  # best effort: the submit's error is what the user needs to see


# ---------------------------------------------------------------- output


def summary_table(results: list[FileResult]) -> Table:
    counts = Counter(r.status for r in results)
    title = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    table = Table(title=f"{len(results)} files: {title}" if results else "no files")
    table.add_column("file", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("status")
    table.add_column("chunks", justify="right")
    table.add_column("reason", overflow="fold")
    for r in results:
        style = "green" if r.ok else "red" if r.status == "failed" else "yellow"
        table.add_row(
            r.source_id,
            _size(r.size),
            f"[{style}]{r.status}[/{style}]",
            "" if r.chunks is None else str(r.chunks),
            r.reason,
        )
    return table


def summary_json(results: list[FileResult]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)


def exit_code(results: list[FileResult], *, followed: bool = True) -> int:
    """1 if a file failed, or (when the jobs were followed) has not finished; else 0."""
    if followed:
        return 0 if all(r.ok for r in results) else 1
    return 1 if any(r.status == "failed" for r in results) else 0


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
