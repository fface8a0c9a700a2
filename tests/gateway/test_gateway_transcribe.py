"""gateway.transcribe through litellm's transcription API to a scripted OpenAI-compatible
/v1/audio/transcriptions on 127.0.0.1: timed segments, recordings from the object store
(tenant-checked), and the answer when no transcription alias is configured."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bus.context import new_context
from bus.errors import InvalidRequest, NotFound, UpstreamError
from bus.uploads import put_stream
from schemas import gateway
from schemas.gateway import ModelsResponse, TranscribeResponse
from tests.gateway_support import serve_gateway
from tests.media import wav_bytes
from tests.openai_mock import Reply
from workers.gateway.config import parse_config
from workers.gateway.service import Gateway

pytestmark = pytest.mark.usefixtures("cache_worker")

SEGMENTS = [(0.0, 2.5, "Welcome to the harbour tour."), (2.5, 6.0, "The crane lifts ships.")]


def _config(url: str, *, with_whisper: bool = True) -> dict:
    def entry(alias: str, model: str, mode: str | None = None) -> dict:
        out: dict = {
            "model_name": alias,
            "litellm_params": {"model": f"openai/{model}", "api_base": url, "api_key": "sk-x"},
        }
        if mode:
            out["model_info"] = {"mode": mode}
        return out

    models = [entry("chat", "m-chat", "chat")]
    if with_whisper:
        models += [
            entry("whisper", "whisper-1", "audio_transcription"),
            entry("whisper-broken", "m-broken-asr", "audio_transcription"),
        ]
    return {"model_list": models, "router_settings": {"num_retries": 0}}


@pytest.fixture
async def whisper(env, mock) -> AsyncIterator[Gateway]:
    async with serve_gateway(parse_config(_config(mock.url)), env) as gw:
        yield gw


def ctx(tenant: str = "acme"):
    return new_context(tenant, user="u1", timeout=20.0)


async def test_transcribe_returns_text_and_timed_segments(whisper, client, mock):
    mock.script("whisper-1", Reply(content=" ".join(t for *_, t in SEGMENTS), segments=SEGMENTS))
    audio = wav_bytes(0.5)
    out = await client.call(
        gateway.TRANSCRIBE, {"audio": audio, "filename": "tour.wav", "language": "en"}, ctx()
    )
    assert isinstance(out, TranscribeResponse)
    assert out.model == "whisper" and out.text.startswith("Welcome to the harbour")
    assert [(s.start, s.end, s.text) for s in out.segments] == SEGMENTS
    assert out.duration == 6.0
    seen = mock.calls("whisper-1")[-1]
    assert seen.path == "/v1/audio/transcriptions"
    assert seen.body["response_format"] == "verbose_json"
    assert seen.body["language"] == "en"
    assert seen.body["file"] == {"filename": "tour.wav", "size": len(audio)}


async def test_transcribe_reads_the_tenants_upload_and_no_one_elses(whisper, env, client, mock):
    mock.script("whisper-1", Reply(content="From the object store.", segments=[(0, 1, "x")]))
    audio = wav_bytes(0.25)
    stored = await put_stream(env.js, "acme", [audio], max_bytes=1 << 20, filename="a.wav")
    out = await client.call(gateway.TRANSCRIBE, {"object_name": stored.name}, ctx("acme"))
    assert out.text == "From the object store."
    assert mock.calls("whisper-1")[-1].body["file"]["size"] == len(audio)
    with pytest.raises(NotFound):
        await client.call(gateway.TRANSCRIBE, {"object_name": stored.name}, ctx("globex"))


async def test_transcribe_validates_its_input(whisper, client):
    with pytest.raises(InvalidRequest):
        await client.call(gateway.TRANSCRIBE, {"filename": "a.wav"}, ctx())
    with pytest.raises(InvalidRequest):
        await client.call(gateway.TRANSCRIBE, {"audio": b"x", "model": "chat"}, ctx())
    with pytest.raises(NotFound):
        await client.call(gateway.TRANSCRIBE, {"audio": b"x", "model": "nope"}, ctx())


async def test_a_provider_error_is_an_upstream_error(whisper, client, mock):
    mock.script("m-broken-asr", Reply(status=500))
    with pytest.raises(UpstreamError):
        await client.call(gateway.TRANSCRIBE, {"audio": b"RIFF", "model": "whisper-broken"}, ctx())


async def test_models_lists_the_transcription_alias_as_default(whisper, client):
    out = await client.request("gateway.models.request", {}, ctx(), ModelsResponse)
    whisper_info = next(m for m in out.models if m.alias == "whisper")
    assert whisper_info.mode == "audio_transcription" and whisper_info.default


async def test_without_a_transcription_alias_the_answer_says_how_to_configure_one(
    env, client, mock
):
    async with serve_gateway(parse_config(_config(mock.url, with_whisper=False)), env):
        with pytest.raises(NotFound) as err:
            await client.call(gateway.TRANSCRIBE, {"audio": b"RIFF"}, ctx())
    assert "audio_transcription" in err.value.message and "GATEWAY_MODELS" in err.value.message
