"""Recordings end to end: ingestion sends a WAV to the real gateway's gateway.transcribe,
litellm calls a scripted OpenAI-compatible /v1/audio/transcriptions on 127.0.0.1, the
timed segments become chunks, and rag.query cites the timestamp. Without a transcription
alias the job fails with a reason that says how to configure one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bus.uploads import put_stream
from bus.worker import WorkerEnv
from mesh.runner import serving
from schemas.ingestion import SubmitResponse
from schemas.rag import QueryResponse
from tests.gateway_support import serve_gateway
from tests.media import wav_bytes
from tests.openai_mock import Reply
from tests.rag_support import ctx, unique, wait_jobs
from workers.gateway.config import parse_config

pytestmark = pytest.mark.usefixtures("cache_worker")

FILLER = " ".join(f"word{i}" for i in range(150))
SEGMENTS = [
    (0.0, 12.0, f"Welcome aboard the harbour tour. {FILLER}"),
    (65.0, 72.5, f"The blue crane lifts container ships onto the quay. {FILLER}"),
    (130.0, 140.0, f"Thank you for travelling with us. {FILLER}"),
]


@pytest.fixture(scope="module", autouse=True)
async def mesh(env: WorkerEnv) -> AsyncIterator[None]:
    async with serving(["ingestion", "rag"], env):
        yield


def config(url: str, *, whisper: bool):
    def entry(alias: str, model: str, mode: str) -> dict:
        params = {"model": f"openai/{model}", "api_base": url, "api_key": "sk-x"}
        return {"model_name": alias, "litellm_params": params, "model_info": {"mode": mode}}

    models = [entry("chat", "m-chat", "chat"), entry("embed", "m-embed", "embedding")]
    if whisper:
        models.append(entry("whisper", "whisper-1", "audio_transcription"))
    return parse_config({"model_list": models, "router_settings": {"num_retries": 0}})


async def ingest_wav(env: WorkerEnv, client, cid: str, name: str) -> str:
    stored = await put_stream(env.js, "acme", [wav_bytes(0.5)], max_bytes=1 << 20, filename=name)
    out = await client.request(
        "ingestion.submit.request",
        {"collection_id": cid, "documents": [{"object": stored.ref()}]},
        ctx(),
        SubmitResponse,
    )
    return out.jobs[0].job_id


async def test_a_recording_is_transcribed_and_cited_by_timestamp(env, client, mock):
    mock.script("whisper-1", Reply(content=" ".join(t for *_, t in SEGMENTS), segments=SEGMENTS))
    async with serve_gateway(config(mock.url, whisper=True), env):
        made = await client.request(
            "rag.create_collection.request",
            {"name": unique("audio"), "embedding_model": "embed"},
            ctx(),
        )
        cid = made["collection_id"]
        job_id = await ingest_wav(env, client, cid, "tour.wav")
        job = (await wait_jobs(client, "acme", [job_id], timeout=120))[job_id]
        assert job.status == "indexed", job.error
        assert job.content_type == "audio/wav" and job.chunks == 3
        answer = await client.request(
            "rag.query.request",
            {
                "collection_ids": [cid],
                "question": "Which crane lifts container ships?",
                "mode": "keyword",
                "use_cache": False,
            },
            ctx(),
            QueryResponse,
        )
    top = answer.citations[0]
    assert top.source_id == "tour.wav" and "crane lifts container ships" in top.quote
    assert top.location is not None and top.location.label == "00:01:05-00:01:12"
    assert (top.location.start_seconds, top.location.end_seconds) == (65.0, 72.5)
    sent = mock.calls("whisper-1")[-1]
    assert sent.body["response_format"] == "verbose_json"
    assert sent.body["file"]["filename"] == "recording.wav"


async def test_without_a_transcription_alias_the_job_fails_saying_how_to_configure_one(
    env, client, mock
):
    async with serve_gateway(config(mock.url, whisper=False), env):
        made = await client.request(
            "rag.create_collection.request",
            {"name": unique("audio"), "embedding_model": "embed"},
            ctx(),
        )
        job_id = await ingest_wav(env, client, made["collection_id"], "memo.wav")
        job = (await wait_jobs(client, "acme", [job_id], timeout=120))[job_id]
    assert job.status == "failed" and job.error
    assert "no transcription model is configured" in job.error
    assert "audio_transcription" in job.error and "GATEWAY_MODELS" in job.error
