"""The typed client (``mesh.client.Mesh``) against every service, really running: cache,
gateway (litellm to a scripted OpenAI-compatible server, local MiniLM embeddings),
prompt, RAG, ingestion and agent workers on the session's NATS, Postgres and Redis.

Also: docs/client.md's examples run as scripts against the same workers and type-check
under mypy, the generated module matches the declarations, and a wrong call is a mypy
error."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import assert_type

import pytest
import yaml

from bus.client import Client
from bus.errors import Conflict, InvalidRequest, NotFound, Unavailable
from bus.settings import Settings
from bus.worker import Endpoint, Worker, WorkerEnv
from mesh.client import DynamicService, Mesh, codegen
from mesh.runner import serving
from schemas import cache, gateway, ingestion, rag
from schemas.context import Context
from schemas.gateway import DEFAULT_CHAT_MODEL, DEFAULT_EMBED_MODEL
from tests.gateway_support import serve_gateway
from tests.openai_mock import MockOpenAI, Reply
from workers.gateway.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "client.md"
PROVIDER_MODEL = "m-client"


@pytest.fixture(scope="module")
def provider() -> Iterator[MockOpenAI]:
    server = MockOpenAI()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def mesh_workers(
    env: WorkerEnv, cache_worker: None, provider: MockOpenAI, tmp_path_factory
) -> AsyncIterator[None]:
    """Every service: the default chat alias on the scripted provider, embeddings local."""
    models = tmp_path_factory.mktemp("client-models") / "models.yaml"
    models.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": DEFAULT_CHAT_MODEL,
                        "litellm_params": {
                            "model": f"openai/{PROVIDER_MODEL}",
                            "api_base": provider.url,
                            "api_key": "test",
                        },
                    },
                    {
                        "model_name": DEFAULT_EMBED_MODEL,
                        "litellm_params": {"model": "local/minilm-l6-v2"},
                    },
                ]
            }
        )
    )
    async with (
        serve_gateway(load_config(str(models)), env),
        serving(["prompt", "ingestion", "rag", "agent"], env),
    ):
        yield


@pytest.fixture
def tenant() -> str:
    return f"client-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def mesh(env: WorkerEnv, tenant: str, mesh_workers: None) -> Mesh:
    # A fresh bus client per test: breaker state never leaks between tests.
    return Mesh(Client(env.nc), tenant=tenant, user="alice", timeout=60)


# ---------------------------------------------------------------- every service


async def test_cache_set_get_delete_return_typed_responses(mesh):
    stored = await mesh.cache.set(key="k", value={"n": [1, 2]}, tags=["t1"])
    assert isinstance(stored, cache.CacheSetResponse) and stored.ok
    got = await mesh.cache.get(cache.CacheGetRequest(key="k"))
    assert_type(got, cache.CacheGetResponse)
    assert (got.hit, got.value) == (True, {"n": [1, 2]})
    assert (await mesh.cache.delete(keys=["k", "missing"])).deleted == 1
    assert (await mesh.cache.get(key="k")).hit is False


async def test_gateway_generate_answers_from_the_scripted_provider(mesh, provider):
    provider.script(PROVIDER_MODEL, Reply(content="Hello from the scripted model.", usage=(7, 5)))
    answer = await mesh.gateway.generate(
        messages=[{"role": "user", "content": "Say hello"}], temperature=0.3
    )
    assert_type(answer, gateway.GenerateResponse)
    assert answer.message.content == "Hello from the scripted model."
    assert answer.model == DEFAULT_CHAT_MODEL
    assert answer.usage.total_tokens == 12
    assert provider.calls(PROVIDER_MODEL)[-1].body["messages"][-1]["content"] == "Say hello"


async def test_gateway_stream_yields_typed_chunks_ending_with_usage(mesh, provider):
    provider.script(PROVIDER_MODEL, Reply(content="one two three", usage=(4, 3)))
    chunks = [
        c
        async for c in mesh.gateway.stream(
            messages=[{"role": "user", "content": "Count"}], temperature=0.4
        )
    ]
    assert all(isinstance(c, gateway.GenerateChunk) for c in chunks)
    assert "".join(c.delta.content or "" for c in chunks) == "one two three"
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7


async def test_gateway_embed_models_and_count_tokens(mesh):
    vectors = await mesh.gateway.embed(texts=["a cat", "a kitten"])
    assert len(vectors.vectors) == 2 and len(vectors.vectors[0]) == 384
    aliases = {m.alias: m.mode for m in (await mesh.gateway.models()).models}
    assert aliases == {DEFAULT_CHAT_MODEL: "chat", DEFAULT_EMBED_MODEL: "embedding"}
    counted = await mesh.gateway.count_tokens(model=DEFAULT_EMBED_MODEL, texts=["a b c", "d"])
    assert len(counted.counts) == 2 and counted.total == sum(counted.counts) > 0


async def test_prompt_create_then_render(mesh):
    created = await mesh.prompt.create(name="welcome", type="text", template="Hi {{ who }}!")
    assert created.version == 1
    rendered = await mesh.prompt.render(name="welcome", variables={"who": "Ann"})
    assert (rendered.text, rendered.version) == ("Hi Ann!", 1)
    with pytest.raises(Conflict):
        await mesh.prompt.create(name="welcome", type="text", template="again")


async def test_rag_ingest_search_and_query(mesh, provider):
    provider.script(PROVIDER_MODEL, Reply(content="Book economy class [2]."))
    collection = await mesh.rag.create_collection(name="handbook")
    assert_type(collection, rag.Collection)
    cid = collection.collection_id
    docs = [
        {"source_id": "leave.md", "text": "# Leave\n\nRequest annual leave two weeks ahead."},
        {"source_id": "travel.md", "text": "# Travel\n\nBook economy class for short flights."},
    ]
    first = await mesh.rag.ingest(collection_id=cid, documents=docs)
    assert [d.status for d in first.documents] == ["created", "created"]
    again = await mesh.rag.ingest(collection_id=cid, documents=docs)
    assert [d.status for d in again.documents] == ["unchanged", "unchanged"]
    found = await mesh.rag.search(collection_ids=[cid], query="holiday request", top_k=1)
    assert [r.source_id for r in found.results] == ["leave.md"]
    answer = await mesh.rag.query(collection_ids=[cid], question="How do I book a flight?")
    assert answer.answer.startswith("Book economy class")


async def test_ingestion_submit_is_followed_to_indexed(mesh):
    cid = (await mesh.rag.create_collection(name="notes")).collection_id
    submitted = await mesh.ingestion.submit(
        collection_id=cid,
        documents=[{"text": "# Parking\n\nVisitors park on level 2.", "source_id": "parking"}],
    )
    job = submitted.jobs[0]
    async with asyncio.timeout(60):
        while (got := await mesh.ingestion.get_job(job_id=job.job_id)).status not in (
            "indexed",
            "failed",
        ):
            await asyncio.sleep(0.2)
    assert_type(got, ingestion.Job)
    assert (got.status, got.source_id, got.error) == ("indexed", "parking", None)
    listed = await mesh.ingestion.list_jobs(collection_id=cid)
    assert [j.job_id for j in listed.jobs] == [job.job_id]


async def test_agent_create_execute_and_stream(mesh, provider):
    provider.script(PROVIDER_MODEL, Reply(content="Hello, I am the agent."))
    agent = await mesh.agent.create(name="helper", system_prompt="Answer briefly.")
    run = await mesh.agent.execute(agent_id=agent.agent_id, task="Say hello", cache=False)
    assert (run.status, run.output) == ("succeeded", "Hello, I am the agent.")
    events = [
        e async for e in mesh.agent.stream(agent_id=agent.agent_id, task="Again", cache=False)
    ]
    assert events[0].event == "run" and events[-1].event == "done"
    assert events[-1].result is not None and events[-1].result.output == "Hello, I am the agent."


# ---------------------------------------------------------------- errors, tenancy, policy


async def test_worker_errors_are_raised_as_their_typed_exceptions(mesh):
    with pytest.raises(NotFound) as caught:
        await mesh.ingestion.get_job(job_id="job_missing")
    assert caught.value.status == 404


async def test_a_bad_request_is_refused_before_sending_with_field_errors(mesh):
    with pytest.raises(InvalidRequest) as caught:
        await mesh.rag.search(collection_ids=[], query="x")
    assert [d["loc"] for d in caught.value.details] == [["collection_ids"]]
    with pytest.raises(TypeError):
        await mesh.cache.get(cache.CacheGetRequest(key="k"), key="k")  # type: ignore[call-overload]


async def test_another_tenant_cannot_read_or_change_the_data(mesh):
    await mesh.cache.set(key="secret", value="mine")
    cid = (await mesh.rag.create_collection(name="private")).collection_id
    other = mesh.with_options(tenant=f"other-{uuid.uuid4().hex[:6]}")
    assert (await other.cache.get(key="secret")).hit is False
    assert (await other.cache.delete(keys=["secret"])).deleted == 0
    with pytest.raises(NotFound):
        await other.rag.get_collection(collection_id=cid)
    with pytest.raises(NotFound):
        await other.rag.search(collection_ids=[cid], query="anything")
    assert (await mesh.cache.get(key="secret")).value == "mine"


class _Flaky:
    """Answers ``unavailable`` ``failures`` times, then succeeds; counts calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def get(self, req: cache.CacheGetRequest, ctx: Context) -> cache.CacheGetResponse:
        self.calls += 1
        if self.calls <= self.failures:
            raise Unavailable("flaky")
        return cache.CacheGetResponse(hit=True, value=ctx.tenant)

    async def generate(
        self, req: gateway.GenerateRequest, ctx: Context
    ) -> gateway.GenerateResponse:
        self.calls += 1
        raise Unavailable("flaky")


async def test_only_idempotent_operations_are_retried(env, tenant):
    flaky = _Flaky(failures=1)
    worker = Worker(
        "flakyclient",
        endpoints=[
            Endpoint(cache.GET.served_as("flakyclient"), flaky.get),
            Endpoint(gateway.GENERATE.served_as("flakyclient"), flaky.generate),
        ],
    )
    stand_ins = {"cache": "flakyclient", "gateway": "flakyclient"}
    async with worker.serve(env.nc):
        mesh = Mesh(Client(env.nc), tenant=tenant, served_as=stand_ins)
        got = await mesh.cache.get(key="k")  # idempotent: retried once, then answered
        assert (got.hit, got.value, flaky.calls) == (True, tenant, 2)
        flaky.calls = 0
        with pytest.raises(Unavailable):  # a paid call: never retried
            await mesh.gateway.generate(messages=[{"role": "user", "content": "hi"}])
        assert flaky.calls == 1


async def test_the_breaker_opens_and_then_fails_fast_without_calling_the_service(env, tenant):
    down = _Flaky(failures=1_000)
    worker = Worker("downclient", endpoints=[Endpoint(cache.GET.served_as("downclient"), down.get)])
    async with worker.serve(env.nc):
        mesh = Mesh(Client(env.nc), tenant=tenant, served_as={"cache": "downclient"})
        for _ in range(2):  # 3 + 2 attempts: the fifth failure opens the circuit
            with pytest.raises(Unavailable):
                await mesh.cache.get(key="k")
        assert down.calls == 5
        with pytest.raises(Unavailable, match="circuit open"):
            await mesh.with_options(timeout=5).cache.get(key="k")  # copies share breakers
        assert down.calls == 5


async def test_a_handler_context_carries_its_correlation_id_and_deadline(env, mesh_workers):
    from bus.context import new_context

    parent = new_context("ctx-tenant", user="bob", correlation_id="corr-123", timeout=5)
    mesh = Mesh(Client(env.nc), context=parent)
    ctx = mesh.context()
    assert (ctx.tenant, ctx.user, ctx.correlation_id) == ("ctx-tenant", "bob", "corr-123")
    assert ctx.request_id != parent.request_id and ctx.deadline <= parent.deadline
    assert (await mesh.cache.set(key="x", value=1)).ok


async def test_operations_are_reachable_by_name_too(mesh):
    await mesh.cache.set(key="named", value=3)
    assert (await mesh.cache["get"](key="named")).value == 3
    dynamic = mesh.service("cache")
    assert isinstance(dynamic, DynamicService)
    assert (await dynamic.get(key="named")).value == 3
    with pytest.raises(AttributeError):
        mesh.cache["nope"]
    with pytest.raises(LookupError):
        mesh.service("nosuchservice")


def test_every_declared_service_has_a_typed_namespace():
    names = codegen.service_names()
    assert {"cache", "gateway", "prompt", "rag", "ingestion", "agent"} <= set(names)
    mesh = Mesh(Client.__new__(Client), tenant="t")
    for name in names:
        module = __import__(f"schemas.{name}", fromlist=["OPERATIONS"])
        namespace = getattr(mesh, name)
        for op in module.OPERATIONS:
            assert callable(getattr(namespace, op.name)), op.subject


def test_the_generated_client_matches_the_declarations():
    assert codegen.generate() == codegen.TARGET.read_text(), (
        "mesh/client/_services.py is out of date: run `python -m mesh.client.codegen`"
    )


# ---------------------------------------------------------------- docs and typing


def doc_examples() -> list[str]:
    """The runnable examples of docs/client.md (```python blocks; ```py ones are fragments)."""
    return re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)


#: What each example must print (the scripted provider answers every chat call).
EXPECTED = [
    ["generate: Hello from the mock.", "finish: stop", "embed: 2 vectors of 384"],
    ["ingest: [('leave.md', 'created'), ('travel.md', 'created')]", "search: leave.md",
     "query: Hello from the mock.", "citations:"],
    ["job: parking indexed", "cache: True {'text': 'hello'}", "prompt: Hello Alice!"],
    ["run: succeeded Hello from the mock.", "event: run", "event: done"],
    ["not found: not_found 404", "invalid: ['collection_ids', 'query']",
     "other tenant sees the greeting: False", "deadline: timeout"],
]  # fmt: skip


async def test_the_docs_examples_run_against_the_mesh(settings: Settings, mesh_workers, provider):
    provider.script(PROVIDER_MODEL, Reply(content="Hello from the mock."))
    examples = doc_examples()
    assert len(examples) == len(EXPECTED)
    env = {**os.environ, "NATS_URL": settings.nats_url or "", "PYTHONPATH": str(ROOT)}
    for i, (code, expected) in enumerate(zip(examples, EXPECTED, strict=True)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, f"example {i + 1} failed:\n{err.decode()}"
        for line in expected:
            assert line in out.decode(), f"example {i + 1}: {line!r} not in\n{out.decode()}"


WRONG_CALLS = """
from mesh.client import Mesh
from schemas import gateway


async def wrong(mesh: Mesh) -> None:
    await mesh.rag.search(collection_ids=["c"], query=3)
    await mesh.rag.search(collection_ids=["c"])
    await mesh.rag.serch(query="x")
    await mesh.cache.get(gateway.ModelsRequest())
    chunk: gateway.GenerateResponse
    async for chunk in mesh.gateway.stream(messages=[]):
        pass
"""


@pytest.mark.timeout(300)
async def test_mypy_accepts_the_docs_examples_and_rejects_wrong_calls(tmp_path):
    from mypy import api

    for i, code in enumerate(doc_examples()):
        (tmp_path / f"example_{i}.py").write_text(code)
    (tmp_path / "wrong.py").write_text(textwrap.dedent(WRONG_CALLS))
    out, err, _ = await asyncio.to_thread(
        api.run,
        [
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "--python-version",
            "3.11",
            "--ignore-missing-imports",
            "--strict-optional",
            str(tmp_path),
        ],
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert not [e for e in errors if "example_" in e], out
    wrong = sorted({int(e.split(":")[1]) for e in errors if "wrong.py" in e})
    assert wrong == [7, 8, 9, 10, 12], out + err
