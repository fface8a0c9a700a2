"""The official ``openai`` client against ``/v1``: chat (plain, streamed), embeddings, models.

The bridge's HTTP handlers are not on this branch, so a minimal ASGI edge under uvicorn
on 127.0.0.1 does what the bridge's OpenAI routes do: call the pure translations in
``schemas.openai_compat`` around requests to the gateway worker over NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator

import openai
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bus.client import Client
from bus.context import new_context, new_id
from bus.errors import MeshError
from mesh.infra import free_port
from schemas.gateway import EmbedResponse, GenerateChunk, GenerateResponse, ModelsResponse
from schemas.openai_compat import (
    SSE_DONE,
    OpenAIRequestError,
    chat_chunks,
    chat_completion,
    chat_request,
    embeddings_request,
    embeddings_response,
    error_body,
    error_status,
    models_list,
    sse,
)
from tests.gateway_support import serve_gateway
from tests.openai_mock import MockOpenAI, Reply
from workers.gateway.config import load_config

TENANT = "openai-edge"


def edge(client: Client) -> Starlette:
    def failed(exc: MeshError) -> Response:
        return JSONResponse(error_body(exc.code, exc.message), status_code=error_status(exc.code))

    def bad(exc: OpenAIRequestError) -> Response:
        return JSONResponse(error_body("invalid_request", exc.message, exc.param), status_code=400)

    async def chat(request: Request) -> Response:
        try:
            call = chat_request(await request.json())
        except OpenAIRequestError as exc:
            return bad(exc)
        ctx = new_context(TENANT, user="openai-client")
        cid, created = f"chatcmpl-{new_id()}", int(time.time())
        if not call.stream:
            try:
                resp = await client.request(
                    "gateway.generate.request", call.request, ctx, GenerateResponse
                )
            except MeshError as exc:
                return failed(exc)
            return JSONResponse(chat_completion(resp, completion_id=cid, created=created))

        async def events() -> AsyncIterator[bytes]:
            first = True
            try:
                async for chunk in client.stream(
                    "gateway.stream.request", call.request, ctx, GenerateChunk
                ):
                    for data in chat_chunks(
                        chunk,
                        completion_id=cid,
                        created=created,
                        model=call.request.model or "",
                        first=first,
                        include_usage=call.include_usage,
                    ):
                        yield sse(data)
                    first = False
            except MeshError as exc:
                yield sse(error_body(exc.code, exc.message))
                return
            yield SSE_DONE

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        try:
            call = embeddings_request(await request.json())
        except OpenAIRequestError as exc:
            return bad(exc)
        try:
            resp = await client.request(
                "gateway.embed.request", call.request, new_context(TENANT), EmbedResponse
            )
        except MeshError as exc:
            return failed(exc)
        return JSONResponse(embeddings_response(resp, call.encoding_format))

    async def models(request: Request) -> Response:
        resp = await client.request(
            "gateway.models.request", {}, new_context(TENANT), ModelsResponse
        )
        return JSONResponse(models_list(resp))

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


@pytest.fixture(scope="module")
def mock() -> Iterator[MockOpenAI]:
    server = MockOpenAI()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def base_url(env, mock, tmp_path_factory) -> AsyncIterator[str]:
    path = tmp_path_factory.mktemp("openai") / "models.yaml"
    models = {
        "model_list": [
            {
                "model_name": "chat",
                "litellm_params": {
                    "model": "openai/m-edge",
                    "api_base": mock.url,
                    "api_key": "os.environ/EDGE_KEY",
                },
            },
            {"model_name": "local-embed", "litellm_params": {"model": "local/minilm-l6-v2"}},
        ]
    }
    path.write_text(yaml.safe_dump(models))
    os.environ["EDGE_KEY"] = "sk-edge"
    try:
        config = load_config(str(path))
    finally:
        del os.environ["EDGE_KEY"]
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            edge(Client(env.nc)), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    async with serve_gateway(config, env):
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                await asyncio.sleep(0.02)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)


@pytest.fixture
async def oai(base_url) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0) as c:
        yield c


async def test_openai_client_chat(oai, mock):
    mock.script("m-edge", Reply(content="Hi from the gateway.", usage=(6, 4)))
    out = await oai.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], temperature=0.5
    )
    assert out.choices[0].message.content == "Hi from the gateway."
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.total_tokens == 10
    assert out.model == "chat"


async def test_openai_client_streaming_chat(oai, mock):
    mock.script("m-edge", Reply(content="streaming works fine", usage=(5, 3)))
    stream = await oai.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(text) == "streaming works fine"
    assert finish == "stop"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 3)


async def test_openai_client_tool_calls(oai, mock):
    call = {"id": "call_7", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    mock.script("m-edge", Reply(content=None, tool_calls=[call], finish_reason="tool_calls"))
    out = await oai.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "call f"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    tc = out.choices[0].message.tool_calls[0]
    assert (tc.id, tc.function.name) == ("call_7", "f")


async def test_openai_client_embeddings(oai):
    # The client asks for base64 by default and decodes it.
    out = await oai.embeddings.create(model="local-embed", input=["a cat", "a kitten"])
    assert len(out.data) == 2 and len(out.data[0].embedding) == 384
    floats = await oai.embeddings.create(
        model="local-embed", input="a cat", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(out.data[0].embedding, abs=1e-6)


async def test_openai_client_models(oai):
    out = await oai.models.list()
    assert {m.id for m in out.data} == {"chat", "local-embed"}


async def test_openai_client_sees_errors_as_its_own_types(oai, mock):
    with pytest.raises(openai.NotFoundError):
        await oai.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError):
        await oai.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], logit_bias={"1": 1}
        )
    mock.script("m-edge", Reply(status=429))
    with pytest.raises(openai.RateLimitError):
        await oai.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}]
        )
