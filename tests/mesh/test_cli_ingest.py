"""``mesh ingest``, ``mesh jobs``, ``mesh search`` and ``mesh ask`` as a user runs them: the
CLI in its own process against the session's NATS, with the real ingestion and RAG workers
(and the scripted gateway of tests/fake_gateway.py) in this one."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
import uuid
from pathlib import Path

import pytest

from bus.client import Client
from bus.settings import Settings
from mesh.client import Mesh

pytestmark = pytest.mark.usefixtures("rag_mesh")

#: The CLI's upload limit in these tests: big.md is over it, everything else under.
UPLOAD_LIMIT = 64 * 1024

GOOD = {
    "guide/intro.md": "# Intro\n\nThe hydraulic press needs 180 bar before the first stroke.\n",
    "guide/setup.txt": "Setup\n\nBolt the press to the floor and check the oil level daily.\n",
    "data/parts.csv": "part,price\nvalve,12\npiston,40\n",
    "notes.html": "<html><body><h1>Notes</h1><p>Wear gloves near the press.</p></body></html>",
}
BAD = {
    "bad/empty.txt": b"",
    "bad/program.txt": b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 64,
    "bad/broken.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ntruncated",
    "bad/big.md": b"# Big\n\n" + b"word " * (UPLOAD_LIMIT // 5 + 10),
}
SKIPPED = {".hidden/secret.md": "# Secret\n", "debug.log": "log line\n"}


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "NATS_URL": settings.nats_url or "",
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "UPLOAD_MAX_BYTES": str(UPLOAD_LIMIT),
        "COLUMNS": "200",  # rich's table width outside a terminal
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }


async def mesh_cli(settings: Settings, *args: str, timeout: float = 180) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesh",
        *args,
        env=cli_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    for rel, text in {**GOOD, **SKIPPED}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel, data in BAD.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def tenant() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


def by_source(stdout: str) -> dict[str, dict]:
    return {row["source_id"]: row for row in json.loads(stdout)}


async def test_ingest_reports_each_file_and_fails_for_the_bad_ones(settings, folder, tenant):
    code, out, err = await mesh_cli(
        settings, "ingest", str(folder), "--collection", "manuals", "--tenant", tenant,
        "--exclude", "*.log", "--json",
    )  # fmt: skip
    assert code == 1, err
    rows = by_source(out)
    assert set(rows) == set(GOOD) | set(BAD)  # hidden and excluded files are not taken
    assert {s: rows[s]["status"] for s in GOOD} == dict.fromkeys(GOOD, "indexed")
    assert all(rows[s]["chunks"] >= 1 and rows[s]["reason"] == "" for s in GOOD)
    assert {s: rows[s]["status"] for s in BAD} == dict.fromkeys(BAD, "failed")
    assert "the file is empty" in rows["bad/empty.txt"]["reason"]
    assert "binary content (ELF" in rows["bad/program.txt"]["reason"]
    assert "PDF" in rows["bad/broken.pdf"]["reason"]
    assert rows["bad/big.md"]["reason"].startswith("payload_too_large")
    assert rows["bad/big.md"]["job_id"] is None  # refused before uploading


async def test_a_rerun_skips_unchanged_files_and_reindexes_changed_ones(
    settings, folder, tenant, env
):
    args = ("--collection", "rerun", "--tenant", tenant, "--exclude", "bad/*", "--exclude", "*.log")
    args += ("--json",)
    code, out, err = await mesh_cli(settings, "ingest", str(folder), *args)
    assert code == 0, err
    first = by_source(out)
    assert {r["status"] for r in first.values()} == {"indexed"}

    (folder / "guide/intro.md").write_text("# Intro\n\nThe press now needs 200 bar.\n")
    code, out, err = await mesh_cli(settings, "ingest", str(folder), *args)
    assert code == 0, err
    second = by_source(out)
    assert second["guide/intro.md"]["status"] == "indexed"
    assert second["guide/intro.md"]["job_id"] != first["guide/intro.md"]["job_id"]
    unchanged = {s for s, r in second.items() if r["status"] == "unchanged"}
    assert unchanged == set(GOOD) - {"guide/intro.md"}
    assert all(second[s]["job_id"] is None for s in unchanged)  # nothing uploaded

    mesh = Mesh(Client(env.nc), tenant=tenant)
    cid = next(c for c in (await mesh.rag.list_collections()).collections).collection_id
    jobs = (await mesh.ingestion.list_jobs(collection_id=cid)).jobs
    assert sorted(j.source_id for j in jobs) == sorted([*GOOD, "guide/intro.md"])
    found = await mesh.rag.search(collection_ids=[cid], query="press bar", top_k=5)
    intro = [r.text for r in found.results if r.source_id == "guide/intro.md"]
    assert intro and "200 bar" in intro[0] and "180" not in intro[0]


async def test_the_summary_table_names_each_failure_and_its_reason(settings, folder, tenant):
    code, out, err = await mesh_cli(
        settings, "ingest", str(folder / "bad"), str(folder / "notes.html"),
        "--collection", "table", "--tenant", tenant,
    )  # fmt: skip
    assert code == 1, err
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    assert "indexed" in lines["notes.html"]
    assert "failed" in lines["empty.txt"] and "the file is empty" in lines["empty.txt"]
    assert "failed" in lines["big.md"] and "payload_too_large" in lines["big.md"]
    assert "5 files: 4 failed, 1 indexed" in out


async def test_ingest_shows_upload_and_stage_progress_in_a_terminal(settings, folder, tenant):
    """Under a pseudo-terminal rich draws live bars: bytes uploaded, then jobs per stage."""
    primary, secondary = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "ingest", str(folder / "guide"),
        "--collection", "tty", "--tenant", tenant,
        env={**cli_env(settings), "TERM": "xterm"},
        stdin=secondary, stdout=secondary, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)

    def read_all() -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    screen = (await asyncio.wait_for(asyncio.to_thread(read_all), 180)).decode(errors="replace")
    os.close(primary)
    assert await asyncio.wait_for(proc.wait(), 30) == 0, screen
    assert "uploaded" in screen
    assert "indexing" in screen and "indexed 2" in screen
    assert "━" in screen  # a drawn bar
    assert "2 files: 2 indexed" in screen
    assert "nats_disconnected" not in screen  # the CLI logs only errors


async def test_jobs_search_and_ask_read_the_collection(settings, folder, tenant):
    code, _, err = await mesh_cli(
        settings, "ingest", str(folder / "guide"), "--collection", "look", "--tenant", tenant,
        "--json",
    )  # fmt: skip
    assert code == 0, err  # source ids are relative to the folder given

    code, out, err = await mesh_cli(
        settings, "search", "oil level", "--collection", "look", "--tenant", tenant, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["results"][0]["source_id"] == "setup.txt"

    code, out, err = await mesh_cli(
        settings, "search", "oil level", "--collection", "look", "--tenant", tenant
    )
    assert code == 0 and "setup.txt" in out and "results for 'oil level'" in out

    code, out, err = await mesh_cli(
        settings, "ask", "How often is the oil checked?", "--collection", "look",
        "--tenant", tenant, "--json",
    )  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)
    assert "oil level daily" in answer["answer"]
    assert [c["source_id"] for c in answer["citations"]] == ["setup.txt"]

    code, out, err = await mesh_cli(
        settings, "jobs", "--collection", "look", "--tenant", tenant, "--json"
    )
    assert code == 0, err
    assert sorted(j["source_id"] for j in json.loads(out)["jobs"]) == sorted(
        ["intro.md", "setup.txt"]
    )
    code, out, _ = await mesh_cli(settings, "jobs", "--collection", "look", "--tenant", tenant)
    assert code == 0 and "Ingestion jobs (2, newest first)" in out


async def test_an_unknown_collection_is_an_error_for_search_and_another_tenant_sees_none(
    settings, folder, tenant
):
    code, _, err = await mesh_cli(
        settings, "ingest", str(folder / "notes.html"), "--collection", "mine",
        "--tenant", tenant, "--json",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = await mesh_cli(
        settings, "search", "gloves", "--collection", "mine", "--tenant", f"{tenant}-other"
    )
    assert code == 1 and "no collection named 'mine'" in err
