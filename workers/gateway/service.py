"""Gateway Service endpoints:
``gateway.{generate,stream,embed,models,count_tokens,transcribe}.request``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import litellm
import structlog
from nats.js import JetStreamContext

from bus.codec import Codec
from bus.context import remaining
from bus.errors import InvalidRequest, MeshError, NotFound, Unavailable
from bus.settings import DEFAULT_MAX_CONCURRENCY
from bus.uploads import read_object
from bus.worker import Endpoint, Worker, WorkerEnv
from schemas import gateway
from schemas.context import Context
from schemas.gateway import (
    MAX_TRANSCRIBE_BYTES,
    CountTokensRequest,
    CountTokensResponse,
    Delta,
    EmbedRequest,
    EmbedResponse,
    FunctionCallDelta,
    GenerateChunk,
    GenerateRequest,
    GenerateResponse,
    ModelInfo,
    ModelsRequest,
    ModelsResponse,
    ToolCallDelta,
    TranscribeRequest,
    TranscribeResponse,
    TranscriptSegment,
    Usage,
)
from workers.gateway import llm, local, tokens
from workers.gateway.background import Background, running
from workers.gateway.budgets import BudgetGuard, watching
from workers.gateway.cache import DEFAULT_TTL_S, ResponseCache, cache_key, cache_policy
from workers.gateway.config import Alias, Deployment, GatewayConfig, load_config
from workers.gateway.dispatch import AttemptsFailed, Dispatcher, Outcome
from workers.gateway.errors import map_error
from workers.gateway.events import CallRecord, Events
from workers.gateway.fast import FastPath, Target
from workers.gateway.images import check_image_urls
from workers.gateway.settings import GatewaySettings

_log = structlog.get_logger(__name__)

#: What a caller is told when no transcription alias is configured.
NO_TRANSCRIPTION_MODEL = (
    "no transcription model is configured: add an alias with model_info.mode "
    "audio_transcription to GATEWAY_MODELS, e.g. {model_name: whisper, litellm_params: "
    "{model: openai/whisper-1, api_key: os.environ/OPENAI_API_KEY}, model_info: "
    "{mode: audio_transcription}} (see docs/services/gateway.md)"
)

VERSION = "0.1.0"

T = TypeVar("T")


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        events: Events,
        cache: ResponseCache,
        log_content: bool = False,
        budgets: BudgetGuard | None = None,
        js: JetStreamContext | None = None,
        image_url_hosts: tuple[str, ...] = (),
        fast: FastPath | None = None,
    ) -> None:
        self.config = config
        self.fast = fast
        """Direct HTTP calls to OpenAI-compatible deployments (fast.py); None: litellm only."""
        self.image_url_hosts = image_url_hosts
        self.dispatcher = Dispatcher(config)
        self.events = events
        self.cache = cache
        self.log_content = log_content
        self.budgets = budgets
        self.js = js

    # ---------------------------------------------------------------- generate

    async def generate(self, req: GenerateRequest, ctx: Context) -> GenerateResponse:
        check_image_urls(req, self.image_url_hosts)
        alias = self.dispatcher.resolve(req.model, "chat")
        if self.budgets is not None:
            self.budgets.check(ctx)  # before any provider is called
        call = CallRecord("generate", alias.name, ctx)
        messages = llm.messages_of(req)
        read, write = cache_policy(req)
        key = cache_key(ctx.tenant or "", alias.name, req) if read or write else None
        try:
            if read and key:
                cached = await self.cache.get(key, ctx)
                if cached is not None:
                    answer = GenerateResponse.model_validate(
                        {**cached, "cost": 0.0, "cached": True}
                    )
                    self._record(call, ctx, answer.usage, 0.0, True, messages, answer.message)
                    return answer
            params = llm.params_of(req)

            async def attempt(deployment: Deployment, timeout: float) -> llm.Answer:
                # Parsed inside the attempt: a malformed answer is retried like a 5xx.
                direct = self._direct(deployment, messages, params)
                if direct is not None:
                    assert self.fast is not None
                    return await self.fast.complete(direct[0], direct[1], timeout)
                return llm.answer_of(await llm.complete(deployment, messages, params, timeout))

            outcome = await self._dispatch(call, alias, ctx, attempt)
        except (MeshError, asyncio.CancelledError) as exc:
            self._failed(call, ctx, exc, messages)
            raise
        served, result = outcome.alias, outcome.value
        response = GenerateResponse(
            model=served.name,
            message=result.message,
            finish_reason=result.finish_reason,
            usage=result.usage,
            cost=_cost(served, result.usage),
        )
        if write and key:
            ttl = req.cache.ttl if req.cache else None
            self.cache.put(key, response.model_dump(exclude={"cached"}), ttl, ctx)
        self._record(call, ctx, response.usage, response.cost, False, messages, response.message)
        return response

    # ---------------------------------------------------------------- stream

    async def stream(self, req: GenerateRequest, ctx: Context) -> AsyncIterator[GenerateChunk]:
        check_image_urls(req, self.image_url_hosts)
        alias = self.dispatcher.resolve(req.model, "chat")
        if self.budgets is not None:
            self.budgets.check(ctx)  # before any provider is called
        call = CallRecord("stream", alias.name, ctx)
        messages = llm.messages_of(req)
        read, write = cache_policy(req)
        key = cache_key(ctx.tenant or "", alias.name, req) if read or write else None
        if read and key:
            cached = await self.cache.get(key, ctx)
            if cached is not None:
                answer = GenerateResponse.model_validate({**cached, "cost": 0.0, "cached": True})
                call.first_token = time.perf_counter()
                self._record(call, ctx, answer.usage, 0.0, True, messages, answer.message)
                for chunk in _replay(answer):
                    yield chunk
                return
        params = llm.params_of(req)
        state = llm.StreamState()
        try:
            outcome = await self._dispatch(
                call, alias, ctx, lambda d, t: self._open_stream(d, messages, params, t)
            )
            first, rest = outcome.value
            served = outcome.alias
            delta = state.take(first)
            if delta is not None:
                call.first_token = time.perf_counter()
                yield GenerateChunk(delta=delta, model=served.name)
            try:
                async for chunk in rest:
                    delta = state.take(chunk)
                    if delta is not None:
                        if call.first_token is None:
                            call.first_token = time.perf_counter()
                        yield GenerateChunk(delta=delta, model=served.name)
            except (MeshError, asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                raise map_error(exc, self.config.secrets) from exc
            finally:
                with contextlib.suppress(Exception):
                    await rest.aclose()  # type: ignore[attr-defined]
            message = state.message()
            usage = state.usage or llm.count_usage(
                outcome.deployment, messages, "".join(state.text)
            )
            cost = _cost(served, usage)
            finish = state.finish_reason or ("tool_calls" if message.tool_calls else "stop")
        except (MeshError, asyncio.CancelledError, GeneratorExit) as exc:
            self._failed(call, ctx, exc, messages)
            raise
        # Stored and recorded before the last chunk: a caller may stop reading after it.
        if write and key:
            response = GenerateResponse(
                model=served.name, message=message, finish_reason=finish, usage=usage, cost=cost
            )
            ttl = req.cache.ttl if req.cache else None
            self.cache.put(key, response.model_dump(exclude={"cached"}), ttl, ctx)
        self._record(call, ctx, usage, cost, False, messages, message)
        yield GenerateChunk(model=served.name, finish_reason=finish, usage=usage, cost=cost)

    # ---------------------------------------------------------------- embed

    async def embed(self, req: EmbedRequest, ctx: Context) -> EmbedResponse:
        alias = self.dispatcher.resolve(req.model, "embedding")
        if self.budgets is not None:
            self.budgets.check(ctx)  # before any provider is called
        call = CallRecord("embed", alias.name, ctx)
        dimensions = req.dimensions
        if dimensions is not None and alias.provider == local.PROVIDER:
            if dimensions != alias.dimensions:
                raise InvalidRequest(
                    f"{alias.name!r} makes {alias.dimensions}-dimensional vectors only"
                )
            dimensions = None  # the local provider takes no such parameter
        try:
            outcome = await self._dispatch(
                call, alias, ctx, lambda d, t: self._embed(d, req.texts, dimensions, t)
            )
        except (MeshError, asyncio.CancelledError) as exc:
            self._failed(call, ctx, exc, req.texts)
            raise
        vectors, usage = outcome.value
        cost = outcome.alias.cost(usage.prompt_tokens, 0)
        self._record(call, ctx, usage, cost, False, req.texts, None)
        return EmbedResponse(model=outcome.alias.name, vectors=vectors, usage=usage, cost=cost)

    # ---------------------------------------------------------------- transcribe

    async def transcribe(self, req: TranscribeRequest, ctx: Context) -> TranscribeResponse:
        if req.model is None and self.config.default_transcription is None:
            raise NotFound(NO_TRANSCRIPTION_MODEL)
        alias = self.dispatcher.resolve(req.model, "audio_transcription")
        if self.budgets is not None:
            self.budgets.check(ctx)  # before any provider is called
        audio = req.audio
        if audio is None:
            if self.js is None or not ctx.tenant:
                raise Unavailable("the gateway has no object store to read the recording from")
            _, audio = await read_object(
                self.js, req.object_name or "", ctx.tenant, max_bytes=MAX_TRANSCRIBE_BYTES
            )
        call = CallRecord("transcribe", alias.name, ctx)
        try:
            outcome = await self._dispatch(
                call,
                alias,
                ctx,
                lambda d, t: llm.transcribe(d, audio, req.filename, req.language, req.prompt, t),
            )
        except (MeshError, asyncio.CancelledError) as exc:
            self._failed(call, ctx, exc, None)
            raise
        result = outcome.value
        self._record(call, ctx, Usage(), 0.0, False, None, None)
        return TranscribeResponse(
            model=outcome.alias.name,
            text=result.text,
            language=result.language,
            duration=result.duration,
            segments=[TranscriptSegment(start=s, end=e, text=t) for s, e, t in result.segments],
        )

    # ---------------------------------------------------------------- models, tokens

    async def models(self, req: ModelsRequest, ctx: Context) -> ModelsResponse:
        defaults = {
            self.config.default_chat,
            self.config.default_embedding,
            self.config.default_transcription,
        }
        return ModelsResponse(
            models=[
                ModelInfo(
                    alias=a.name,
                    provider=a.provider,
                    mode=a.mode,
                    context_window=a.context_window,
                    max_output_tokens=a.max_output_tokens,
                    input_cost_per_token=a.input_cost_per_token,
                    output_cost_per_token=a.output_cost_per_token,
                    dimensions=a.dimensions,
                    default=a.name in defaults,
                    fallbacks=list(a.fallbacks),
                )
                for a in self.config.aliases.values()
            ]
        )

    async def count_tokens(self, req: CountTokensRequest, ctx: Context) -> CountTokensResponse:
        name = req.model or self.config.default_chat
        if name is None:
            raise NotFound("no chat model is configured")
        # Only configured aliases: any model name litellm knows would let a caller pick a
        # tokenizer that litellm downloads from a hub, inline (issue 10, item 5).
        alias = self.config.aliases.get(name)
        if alias is None:
            raise NotFound(f"unknown model alias {name!r}; gateway.models lists them")
        deployment = alias.deployments[0]
        messages = [m.model_dump() for m in req.messages] if req.messages is not None else None
        total, counts = await tokens.count(deployment, messages, req.texts)
        return CountTokensResponse(model=name, total=total, counts=counts)

    # ---------------------------------------------------------------- helpers

    def _direct(
        self, deployment: Deployment, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> tuple[Target, dict[str, Any]] | None:
        """The fast path's target and request body for this attempt, or None for litellm."""
        if self.fast is None:
            return None
        target = self.fast.target(deployment)
        if target is None:
            return None
        body = self.fast.body(target, messages, params)
        return None if body is None else (target, body)

    async def _open_stream(
        self,
        deployment: Deployment,
        messages: list[dict[str, Any]],
        params: dict[str, Any],
        timeout: float,
    ) -> tuple[Any, AsyncIterator[Any]]:
        direct = self._direct(deployment, messages, params)
        if direct is not None:
            assert self.fast is not None
            return await self.fast.open_stream(
                direct[0], direct[1], deployment.stream_timeout or timeout
            )
        return await llm.open_stream(deployment, messages, params, timeout)

    async def _embed(
        self, deployment: Deployment, texts: list[str], dimensions: int | None, timeout: float
    ) -> tuple[list[list[float]], Usage]:
        target = self.fast.target(deployment) if self.fast is not None else None
        if target is not None and self.fast is not None:
            return await self.fast.embed(target, texts, dimensions, timeout)
        return await llm.embed(deployment, texts, dimensions, timeout)

    async def _dispatch(
        self,
        call: CallRecord,
        alias: Alias,
        ctx: Context,
        attempt: Callable[[Deployment, float], Awaitable[T]],
    ) -> Outcome[T]:
        try:
            outcome = await self.dispatcher.call(alias, ctx, attempt)
        except AttemptsFailed as failed:
            call.attempts = failed.attempts
            raise failed.error from None
        call.outcome = outcome
        return outcome

    def _record(
        self,
        call: CallRecord,
        ctx: Context,
        usage: Usage,
        cost: float,
        cache_hit: bool,
        prompt: Any,
        completion: Any,
    ) -> None:
        content = self.log_content
        event = call.event(
            usage=usage,
            cost=cost,
            cache_hit=cache_hit,
            prompt=prompt if content else None,
            completion=_dump(completion) if content else None,
        )
        self.events.publish(event, ctx)

    def _failed(self, call: CallRecord, ctx: Context, exc: BaseException, prompt: Any) -> None:
        code: str
        if isinstance(exc, MeshError):
            code = exc.code
        elif isinstance(exc, asyncio.CancelledError) and (remaining(ctx) or 1.0) <= 0:
            code = "timeout"  # the runtime cancels a handler at its deadline
        else:
            code = "cancelled"  # the caller went away (stream closed, worker stopping)
        event = call.event(error_code=code, prompt=prompt if self.log_content else None)
        self.events.publish(event, ctx)


def _cost(alias: Alias, usage: Usage) -> float:
    return alias.cost(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens_read,
        usage.cached_tokens_write,
    )


def _dump(value: Any) -> Any:
    return value.model_dump(exclude_none=True) if hasattr(value, "model_dump") else value


def _replay(answer: GenerateResponse) -> list[GenerateChunk]:
    """A cached answer as a stream: its whole content, then the final chunk."""
    message = answer.message
    calls = [
        ToolCallDelta(
            index=i,
            id=tc.id,
            type="function",
            function=FunctionCallDelta(name=tc.function.name, arguments=tc.function.arguments),
        )
        for i, tc in enumerate(message.tool_calls or [])
    ]
    chunks = []
    if message.content or calls:
        chunks.append(
            GenerateChunk(
                delta=Delta(content=message.content, tool_calls=calls or None),
                model=answer.model,
                cached=True,
            )
        )
    chunks.append(
        GenerateChunk(
            model=answer.model,
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            cost=0.0,
            cached=True,
        )
    )
    return chunks


def build_worker(
    g: Gateway, codec: Codec | None = None, max_concurrency: int = DEFAULT_MAX_CONCURRENCY
) -> Worker:
    return Worker(
        "gateway",
        endpoints=[
            Endpoint(gateway.GENERATE, g.generate),
            Endpoint(gateway.STREAM, g.stream),
            Endpoint(gateway.EMBED, g.embed),
            Endpoint(gateway.MODELS, g.models),
            Endpoint(gateway.COUNT_TOKENS, g.count_tokens),
            Endpoint(gateway.TRANSCRIBE, g.transcribe),
        ],
        version=VERSION,
        description="One door to LLMs through litellm",
        codec=codec or Codec(),
        max_concurrency=max_concurrency,
    )


async def _warm_up() -> None:
    """litellm imports most of itself lazily, on the first call (~1 s): pay that at start."""
    with contextlib.suppress(Exception):
        await litellm.acompletion(
            model="openai/gpt-4o-mini",
            messages=[{"role": "user", "content": "warm-up"}],
            mock_response="ok",
        )
    with contextlib.suppress(Exception):
        await asyncio.to_thread(litellm.token_counter, model="gpt-4o-mini", text="warm-up")


@asynccontextmanager
async def gateway_running(
    config: GatewayConfig,
    env: WorkerEnv,
    *,
    log_content: bool = False,
    cache_ttl: int = DEFAULT_TTL_S,
    image_url_hosts: tuple[str, ...] = (),
    fast_path: bool = True,
) -> AsyncIterator[Gateway]:
    """A gateway with its background publisher running; pending events drain on exit.
    ``fast_path=False`` sends every call through litellm (``GATEWAY_FAST_PATH``)."""
    codec = Codec(env.settings.codec_type)
    background = Background()
    fast = FastPath(config) if fast_path else None
    async with running(background), watching(env.js) as budgets:
        gw = Gateway(
            config,
            events=Events(env.js, background, codec),
            cache=ResponseCache(env.client, background, cache_ttl),
            log_content=log_content,
            budgets=budgets,
            js=env.js,
            image_url_hosts=image_url_hosts,
            fast=fast,
        )
        try:
            yield gw
        finally:
            if fast is not None:
                await fast.aclose()


@asynccontextmanager
async def lifespan(env: WorkerEnv, settings: GatewaySettings) -> AsyncIterator[Worker]:
    """The worker (``workers.gateway.lifespan`` calls it once litellm may be imported)."""
    config = load_config(settings.models)
    local.register()
    await _warm_up()
    # litellm leaves ~420 000 long-lived tracked objects after import and warm-up, and every
    # full collection walks them all: 300-500 ms p99 under load in bench_gateway.py. Frozen,
    # they are out of the collector's way (p99 ~190 ms in the same bench).
    gc.freeze()
    _log.info(
        "gateway_models",
        aliases=sorted(config.aliases),
        default_chat=config.default_chat,
        default_embedding=config.default_embedding,
        fast_path=settings.fast_path,
    )
    async with gateway_running(
        config,
        env,
        log_content=settings.log_content,
        cache_ttl=settings.cache_ttl,
        image_url_hosts=tuple(settings.image_url_hosts),
        fast_path=settings.fast_path,
    ) as gw:
        yield build_worker(gw, Codec(env.settings.codec_type), env.settings.max_concurrency)
