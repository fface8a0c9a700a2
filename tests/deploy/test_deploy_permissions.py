"""The deployment's NATS users, for real: a nats-server on ``deploy/nats/nats-auth.conf`` with
passwords minted for this run, streams created by the ``provision`` user, every worker
and the bridge each on its own connection as its own user (``mesh worker``'s code path:
``mesh.runner.bus_env`` + ``serving``), and the end-to-end flows driven over HTTP through
the bridge. The denials are checked against the same server.

Postgres and Redis are the session's; the LLM is the scripted OpenAI-compatible server
behind the real gateway (litellm).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from bus.jetstream import STREAMS
from bus.settings import Settings
from gateway_bridge.app import create_app
from mesh.registry import WORKERS
from mesh.runner import bus_env, serving
from mesh.tools import provision
from schemas.ingestion import UPLOAD_PATH
from tests.bridge_support import auth, bridge_settings, hs_token, http
from tests.bridge_support import serving as serving_http
from tests.deploy_support import AuthNats, mint_passwords
from tests.media import wav_bytes
from tests.openai_mock import MockOpenAI, Reply

pytestmark = pytest.mark.timeout(300)

MODEL = "m-deploy"
#: Every worker in the registry runs here as its own user: a worker that joins the registry
#: (llmops, ml and promptgen have users waiting for them) is started and probed too, and
#: any permission its start needs and lacks shows up in the server's log.
WORKER_NAMES = tuple(WORKERS)


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    return mint_passwords()


@pytest.fixture(scope="module")
def nats_auth(passwords: dict[str, str], tmp_path_factory) -> Iterator[AuthNats]:
    server = AuthNats(tmp_path_factory.mktemp("nats-auth"), passwords=passwords)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _models(url: str) -> dict[str, Any]:
    params = {"api_base": url, "api_key": "sk-deploy-test"}
    return {
        "model_list": [
            {"model_name": "local-chat", "litellm_params": {"model": f"openai/{MODEL}", **params}},
            {
                "model_name": "local-embed",
                "litellm_params": {"model": "openai/m-embed", **params},
                "model_info": {"mode": "embedding"},
            },
            {
                "model_name": "whisper",
                "litellm_params": {"model": "openai/whisper-1", **params},
                "model_info": {"mode": "audio_transcription"},
            },
        ],
        "router_settings": {"num_retries": 0},
    }


def _as(base: Settings, nats_auth: AuthNats, user: str, passwords: dict[str, str]) -> Settings:
    return base.model_copy(
        update={
            "nats_url": nats_auth.url,
            "nats_user": user,
            "nats_password": passwords[user],
            "jetstream_provision": False,  # the `provision` user did it
            "service_name": user,
            "log_level": "warning",
        }
    )


@pytest.fixture(scope="module")
def health_dir(tmp_path_factory) -> Path:
    return Path(tmp_path_factory.mktemp("health"))


@pytest.fixture(scope="module")
async def deployed(
    settings: Settings,
    nats_auth: AuthNats,
    passwords: dict[str, str],
    mock: MockOpenAI,
    health_dir: Path,
    tmp_path_factory,
) -> AsyncIterator[str]:
    """Streams provisioned, every worker as its own user, the bridge; yields its URL."""
    await provision(nats_auth.url, user="provision", password=passwords["provision"], replicas=1)
    models = tmp_path_factory.mktemp("deploy-models") / "models.yaml"
    models.write_text(yaml.safe_dump(_models(mock.url)))
    base = settings.model_copy(update={"health_dir": str(health_dir)})
    # The gateway reads its own settings (GATEWAY_*) in its lifespan, as `mesh worker` does.
    previous = os.environ.get("GATEWAY_MODELS")
    os.environ["GATEWAY_MODELS"] = str(models)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(
            lambda: (
                os.environ.pop("GATEWAY_MODELS", None)
                if previous is None
                else os.environ.__setitem__("GATEWAY_MODELS", previous)
            )
        )
        for name in WORKER_NAMES:
            env = await stack.enter_async_context(
                bus_env(_as(base, nats_auth, name, passwords), name)
            )
            await stack.enter_async_context(serving([name], env))
        app = create_app(bridge_settings(_as(base, nats_auth, "bridge", passwords)))
        url = await stack.enter_async_context(serving_http(app))
        yield url


def _log_violations(server: AuthNats, since: int) -> list[str]:
    lines = server.log.read_text(errors="replace").splitlines()[since:]
    return [line for line in lines if "Permissions Violation" in line]


@pytest.fixture
def clean_log(nats_auth: AuthNats, deployed: str) -> Iterator[None]:
    """The flows must run without a single permission violation in the server's log."""
    start = len(nats_auth.log.read_text(errors="replace").splitlines())
    yield
    assert _log_violations(nats_auth, start) == []


def _sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append({"event": fields.get("event", "message"), "data": fields.get("data")})
    return events


async def _poll(get: Any, done: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await get()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"still {value}"
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- flows


async def test_a_recording_is_transcribed_by_the_gateway_and_cited_by_time(
    deployed: str, mock: MockOpenAI
):
    """Ingestion may ask the gateway to transcribe; the gateway may read the upload."""
    tenant = f"dep-{uuid.uuid4().hex[:6]}"
    token = hs_token(tenant=tenant)
    mock.script(
        "whisper-1",
        Reply(content="Board at gate nine.", segments=[(3.0, 5.5, "Board at gate nine.")]),
    )
    async with http(deployed) as c:
        r = await c.post("/api/v1/rag/collections", json={"name": "calls"}, headers=auth(token))
        assert r.status_code in (200, 201), r.text
        collection = r.json()["collection_id"]
        r = await c.post(
            UPLOAD_PATH,
            data={"collection_id": collection},
            files=[("file", ("call.wav", wav_bytes(0.2), "audio/wav"))],
            headers=auth(token),
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["jobs"][0]["job_id"]

        async def job() -> dict[str, Any]:
            r = await c.get(f"/api/v1/ingestion/jobs/{job_id}", headers=auth(token))
            return dict(r.json())

        done = await _poll(job, lambda j: j["status"] in ("indexed", "failed"))
        assert done["status"] == "indexed", done
        r = await c.post(
            "/api/v1/rag/search",
            json={"collection_ids": [collection], "query": "gate nine", "mode": "keyword"},
            headers=auth(token),
        )
    assert r.status_code == 200, r.text
    [hit] = r.json()["results"]
    assert (
        hit["location"]["start_seconds"] == 3.0 and hit["location"]["label"] == "00:00:03-00:00:05"
    )


@pytest.mark.usefixtures("clean_log")
async def test_a_generation_is_stored_by_llmops_and_queried_through_the_bridge(
    deployed: str, mock: MockOpenAI
):
    """The gateway publishes to LLMOPS, the llmops user consumes and stores it."""
    mock.script(MODEL, Reply(content="hi there"))
    user = f"u-{uuid.uuid4().hex[:6]}"
    token = hs_token(tenant=f"dep-{uuid.uuid4().hex[:6]}", user=user)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    window = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
    async with http(deployed) as c:
        r = await c.post("/api/v1/gateway/generate", json=body, headers=auth(token))
        assert r.status_code == 200, r.text

        async def stored() -> list[dict[str, Any]]:
            r = await c.post("/api/v1/llmops/query", json=window, headers=auth(token))
            assert r.status_code == 200, r.text
            return list(r.json()["operations"])

        [op] = await _poll(stored, bool)
    assert (op["user"], op["operation"], op["status"]) == (user, "generate", "ok")


@pytest.mark.usefixtures("clean_log")
async def test_a_model_is_trained_on_the_ml_queue_and_predicts_through_the_bridge(
    deployed: str,
):
    """ml.train publishes to the ML stream; the ml user's consumer trains and stores it."""
    token = hs_token(tenant=f"dep-{uuid.uuid4().hex[:6]}")
    rows = [{"x": float(i), "y": "big" if i >= 20 else "small"} for i in range(40)]
    job = {
        "name": "sizes",
        "task": "classification",
        "algorithm": "logistic_regression",
        "target": "y",
        "dataset": {"rows": rows},
    }
    async with http(deployed) as c:
        r = await c.post("/api/v1/ml/jobs", json=job, headers=auth(token))
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]

        async def status() -> dict[str, Any]:
            r = await c.get(f"/api/v1/ml/jobs/{job_id}", headers=auth(token))
            return dict(r.json())

        done = await _poll(status, lambda j: j["status"] in ("succeeded", "failed"), 180.0)
        assert done["status"] == "succeeded", done
        r = await c.post(
            "/api/v1/ml/models/sizes/predict",
            json={"rows": [{"x": 1.0}, {"x": 39.0}]},
            headers=auth(token),
        )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == ["small", "big"]


@pytest.mark.usefixtures("clean_log")
async def test_a_prompt_becomes_a_checked_draft_agent_through_the_bridge(
    deployed: str, mock: MockOpenAI
):
    """promptgen calls the gateway and asks the agent, RAG and prompt services (checks)."""
    from tests.promptgen_support import agent_spec, as_json

    mock.script(MODEL, Reply(content=as_json(agent_spec(name="helper"))))
    token = hs_token(tenant=f"dep-{uuid.uuid4().hex[:6]}", roles=["promptgen:author"])
    async with http(deployed) as c:
        r = await c.post(
            "/api/v1/promptgen/agents",
            json={"prompt": "an agent that answers questions"},
            headers=auth(token),
        )
    assert r.status_code == 201, r.text
    draft = r.json()
    assert (draft["kind"], draft["status"], draft["spec"]["name"]) == ("agent", "draft", "helper")
    assert draft["checks"] and all(check["ok"] for check in draft["checks"]), draft["checks"]


@pytest.mark.usefixtures("clean_log")
async def test_cache_round_trip_through_the_bridge(deployed: str):
    token = hs_token(tenant=f"dep-{uuid.uuid4().hex[:6]}")
    async with http(deployed) as c:
        r = await c.post("/api/v1/cache/set", json={"key": "k", "value": "v"}, headers=auth(token))
        assert r.status_code == 200, r.text
        r = await c.post("/api/v1/cache/get", json={"key": "k"}, headers=auth(token))
        assert r.status_code == 200, r.text
        assert r.json()["value"] == "v"


@pytest.mark.usefixtures("clean_log")
async def test_a_streamed_generation_delivers_every_chunk(deployed: str, mock: MockOpenAI):
    pieces = [f"w{i} " for i in range(30)]
    mock.script(MODEL, Reply(pieces=pieces))
    token = hs_token(tenant=f"dep-{uuid.uuid4().hex[:6]}")
    body = {"messages": [{"role": "user", "content": "count"}], "max_tokens": 64}
    async with http(deployed) as c:
        r = await c.post("/api/v1/gateway/stream", json=body, headers=auth(token))
    assert r.status_code == 200, r.text
    events = _sse(r.text)
    chunks = [json.loads(e["data"]) for e in events if e["event"] == "message"]
    text = "".join((ch.get("delta") or {}).get("content") or "" for ch in chunks)
    assert len(chunks) >= 20  # past the single reply `allow_responses: true` would allow
    assert text == "".join(pieces)
    assert events[-1]["event"] == "end"


@pytest.mark.usefixtures("clean_log")
async def test_an_upload_is_indexed_and_cited_by_rag_query(deployed: str, mock: MockOpenAI):
    tenant = f"dep-{uuid.uuid4().hex[:6]}"
    token = hs_token(tenant=tenant)
    doc = b"# Travel policy\n\nBook economy class for flights under six hours.\n"
    async with http(deployed) as c:
        r = await c.post("/api/v1/rag/collections", json={"name": "kb"}, headers=auth(token))
        assert r.status_code in (200, 201), r.text
        collection = r.json()["collection_id"]
        r = await c.post(
            UPLOAD_PATH,
            data={"collection_id": collection},
            files=[("file", ("travel.md", doc, "text/markdown"))],
            headers=auth(token),
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["jobs"][0]["job_id"]

        async def job() -> dict[str, Any]:
            r = await c.get(f"/api/v1/ingestion/jobs/{job_id}", headers=auth(token))
            assert r.status_code == 200, r.text
            return dict(r.json())

        done = await _poll(job, lambda j: j["status"] in ("indexed", "failed"))
        assert done["status"] == "indexed", done
        mock.script(MODEL, Reply(content="Fly economy under six hours [1]."))
        r = await c.post(
            "/api/v1/rag/query",
            json={"collection_ids": [collection], "question": "Which class for short flights?"},
            headers=auth(token),
        )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["answer"] == "Fly economy under six hours [1]."
    assert [cite["source_id"] for cite in answer["citations"]] == ["travel.md"]


@pytest.mark.usefixtures("clean_log")
async def test_a_background_agent_run_waits_for_approval_then_finishes(
    deployed: str, mock: MockOpenAI
):
    tenant = f"dep-{uuid.uuid4().hex[:6]}"
    user = hs_token(tenant=tenant, user="alice")
    boss = hs_token(tenant=tenant, user="boss", roles=["agent:approve"])
    tool_call = {
        "id": "call_mem",
        "type": "function",
        "function": {"name": "memory_write", "arguments": json.dumps({"text": "tea"})},
    }
    mock.script(MODEL, Reply(content=None, tool_calls=[tool_call]), Reply(content="Noted."))
    async with http(deployed) as c:
        r = await c.post(
            "/api/v1/agents",
            json={
                "name": "memo",
                "system_prompt": "You remember things.",
                "tools": ["memory_write"],
                "approval_required": ["memory_write"],
            },
            headers=auth(user),
        )
        assert r.status_code == 201, r.text
        agent_id = r.json()["agent_id"]
        r = await c.post(
            f"/api/v1/agents/{agent_id}/runs",
            json={"task": "Remember: I drink tea", "background": True},
            headers=auth(user),
        )
        assert r.status_code in (200, 202), r.text
        run_id = r.json()["run_id"]
        assert r.json()["status"] == "queued"

        async def run() -> dict[str, Any]:
            r = await c.get(f"/api/v1/agents/{agent_id}/runs/{run_id}", headers=auth(user))
            assert r.status_code == 200, r.text
            return dict(r.json())

        paused = await _poll(run, lambda x: x["status"] not in ("queued", "running"))
        assert paused["status"] == "requires_approval", paused
        r = await c.post(
            f"/api/v1/agents/{agent_id}/runs/{run_id}/approve",
            json={"tool_call_id": "call_mem"},
            headers=auth(boss),
        )
        assert r.status_code == 200, r.text
        done = await _poll(run, lambda x: x["status"] not in ("queued", "running"))
    assert done["status"] == "succeeded" and done["output"] == "Noted."


# --------------------------------------------------------------------------- denials


class _Session:
    """A raw nats-py connection as one user, collecting the server's permission errors."""

    def __init__(self, server: AuthNats, user: str, password: str) -> None:
        self.server, self.user, self.password = server, user, password
        self.errors: list[str] = []
        self.nc: Any = None

    async def __aenter__(self) -> _Session:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            self.server.url,
            user=self.user,
            password=self.password,
            inbox_prefix=f"_INBOX.{self.user}",
            error_cb=on_error,
            max_reconnect_attempts=0,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def violation(self, fragment: str, timeout: float = 5.0) -> str:
        await self.nc.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [
                e
                for e in self.errors
                if "permissions violation" in e.lower() and fragment.lower() in e.lower()
            ]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no violation for {fragment!r}; errors: {self.errors}")


async def test_agent_cannot_publish_ingestion_jobs(
    deployed: str, nats_auth: AuthNats, passwords: dict[str, str]
):
    async with _Session(nats_auth, "admin", passwords["admin"]) as admin:
        before = (await admin.nc.jetstream().stream_info("INGEST")).state.messages
        async with _Session(nats_auth, "agent", passwords["agent"]) as agent:
            await agent.nc.publish("ingest.jobs.parse", b"forged")
            assert "ingest.jobs.parse" in await agent.violation("publish")
        after = (await admin.nc.jetstream().stream_info("INGEST")).state.messages
    assert after == before


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("agent", "_INBOX.bridge.>"),  # another service's replies
        ("agent", "_INBOX.>"),
        ("gateway", "_INBOX.bridge.*.*"),  # cancel subjects only, not the replies beside them
        ("bridge", "cache.>"),  # the bridge calls services, never serves them
        ("gateway", "agent.*.request"),  # a service serves only its own subjects
        ("cache", "$JS.API.>"),  # nobody but the admin sees the whole JetStream API
    ],
)
async def test_subscriptions_outside_a_users_permissions_are_refused(
    deployed: str, nats_auth: AuthNats, passwords: dict[str, str], user: str, subject: str
):
    async with _Session(nats_auth, user, passwords[user]) as s:
        await s.nc.subscribe(subject)
        assert subject.lower() in (await s.violation("subscription")).lower()


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("agent", "$JS.API.STREAM.DELETE.INGEST"),  # no service deletes streams
        ("bridge", "$JS.API.STREAM.DELETE.OBJ_uploads"),
        ("ml", "$O.uploads.C.x"),  # ml reads uploaded data sets, never writes them
        ("rag", "$JS.API.STREAM.DELETE.OBJ_uploads"),
        ("gateway", "agent.execute.request"),  # only the services it calls
        ("bridge", "probe.echo.request"),  # only public services
    ],
)
async def test_publishes_outside_a_users_permissions_are_refused(
    deployed: str, nats_auth: AuthNats, passwords: dict[str, str], user: str, subject: str
):
    async with _Session(nats_auth, user, passwords[user]) as s:
        await s.nc.publish(subject, b"{}")
        assert subject.lower() in (await s.violation("publish")).lower()


async def test_a_wrong_password_is_refused(deployed: str, nats_auth: AuthNats):
    with pytest.raises(Exception, match="[Aa]uthorization"):
        await nats.connect(
            nats_auth.url,
            user="cache",
            password="not-the-password",
            max_reconnect_attempts=0,
            allow_reconnect=False,
        )


async def test_every_stream_was_created_by_the_provision_user(
    deployed: str, nats_auth: AuthNats, passwords: dict[str, str]
):
    async with _Session(nats_auth, "admin", passwords["admin"]) as admin:
        names = {s.config.name for s in await admin.nc.jetstream().streams_info()}
    assert {s.name for s in STREAMS} | {"OBJ_uploads"} <= names


# --------------------------------------------------------------------------- probes


def _probe(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``mesh probe`` exactly as Kubernetes runs it: a process, configured by environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "HEALTH_"))}
    return subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-m", "mesh", "probe", name, "--timeout", "5", *args],
        env={**clean, "MESH_DATA_DIR": env["HEALTH_DIR"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _probe_env(nats_auth: AuthNats, passwords: dict[str, str], user: str, health: Path):
    return {
        "NATS_URL": nats_auth.url,
        "NATS_USER": user,
        "NATS_PASSWORD": passwords[user],
        "HEALTH_DIR": str(health),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }


@pytest.mark.parametrize("name", WORKER_NAMES)
async def test_each_workers_probe_gets_an_answer_from_its_own_instance(
    deployed: str, nats_auth: AuthNats, passwords: dict[str, str], health_dir: Path, name: str
):
    instance = (health_dir / f"{name}.id").read_text()
    env = _probe_env(nats_auth, passwords, name, health_dir)
    out = await asyncio.to_thread(_probe, name, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"{name} ok"
    (health_dir / "stale").mkdir(exist_ok=True)
    (health_dir / "stale" / f"{name}.id").write_text(instance[:-4] + "0000")
    stale = await asyncio.to_thread(_probe, name, {**env, "HEALTH_DIR": str(health_dir / "stale")})
    assert stale.returncode == 1 and "not subscribed" in stale.stderr


async def test_liveness_passes_when_nats_is_unreachable_but_readiness_does_not(
    deployed: str, nats_auth: AuthNats, passwords: dict[str, str], health_dir: Path
):
    env = {
        **_probe_env(nats_auth, passwords, "cache", health_dir),
        "NATS_URL": "nats://127.0.0.1:1",
    }
    ready, live = await asyncio.gather(
        asyncio.to_thread(_probe, "cache", env), asyncio.to_thread(_probe, "cache", env, "--live")
    )
    assert ready.returncode == 1 and "NATS unreachable" in ready.stderr
    assert live.returncode == 0, live.stderr


async def test_no_worker_or_the_bridge_hit_a_permission_violation(
    deployed: str, nats_auth: AuthNats
):
    """Every connection the deployment opens is named; the denial probes above are not."""
    await asyncio.sleep(1.0)  # work the flows left behind (deletes after indexing)
    # The server logs "<version>:python3:<connection name>"; the probes have no name.
    named = [line for line in _log_violations(nats_auth, 0) if ":python3:" in line]
    assert named == []


def test_the_auth_file_has_a_user_per_registry_worker():
    text = (Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-auth.conf").read_text()
    from mesh.registry import WORKERS

    for name in WORKERS:
        assert f"user: {name}," in text and f"${name.upper()}_NATS_PASSWORD" in text
