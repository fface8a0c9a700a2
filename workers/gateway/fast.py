"""The fast path: OpenAI-compatible deployments called straight over HTTP, without litellm's
per-call machinery (~2.5 ms of CPU per call through ``litellm.acompletion``).

Taken for a deployment whose litellm provider is ``openai`` (``openai/<model>``, any
``api_base``), whose model litellm handles with its plain GPT chat configuration (not the
o-series, GPT-5 or audio ones, which rewrite parameters), and whose ``litellm_params`` hold
nothing but ``api_base``, ``api_key``, ``organization`` and ``extra_headers``; and for a
request whose parameters that configuration supports. Everything else goes through
litellm, which stays the reference: ``GATEWAY_FAST_PATH=false`` turns the fast path off.

What it keeps from litellm, by calling litellm's own code where litellm transforms:

- the request body: litellm's OpenAI configuration maps the parameters and rewrites
  ``developer`` messages and tool schemas (its functions, called only when a request has
  them); ``api_base``/``api_key``/``organization`` resolve through the same environment
  fallbacks as ``litellm.acompletion``;
- errors: a non-2xx answer becomes the OpenAI SDK's status error and goes through
  litellm's ``exception_type``, so ``map_error`` sees the very exception litellm would raise
  (context window, rate limit with ``Retry-After``, 401/404...);
- retries, fallbacks, cooldowns, timeouts, usage, cached tokens, cost, budgets, LLMOps
  events and the cache: unchanged, they live around the attempt (``dispatch.py``,
  ``service.py``), the same for both paths. No HTTP-level retry happens here (aiohttp
  retries only idempotent methods; these are POSTs).
"""

from __future__ import annotations

import base64
import json
import ssl
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import litellm
import openai
from litellm.litellm_core_utils.core_helpers import map_finish_reason
from litellm.litellm_core_utils.exception_mapping_utils import exception_type
from litellm.llms.custom_httpx.http_handler import get_ssl_configuration
from litellm.llms.openai.chat.gpt_transformation import (
    OpenAIGPTConfig,
    OpenAIUnknownModelConfig,
)
from litellm.llms.openai.common_utils import OpenAIError, upstream_error_response
from litellm.secret_managers.main import get_secret_str
from litellm.types.utils import LlmProviders
from litellm.utils import ProviderConfigManager

from schemas.gateway import Usage
from workers.gateway import llm
from workers.gateway.config import Deployment, GatewayConfig
from workers.gateway.errors import MalformedAnswer

#: ``litellm_params`` the fast path reproduces; a deployment with any other goes to litellm.
FAST_PARAMS = frozenset({"api_base", "api_key", "organization", "extra_headers"})
#: litellm's chat configurations whose request transform the fast path reproduces.
_PLAIN_CONFIGS = (OpenAIGPTConfig, OpenAIUnknownModelConfig)
_DEFAULT_BASE = "https://api.openai.com/v1"
#: Most connections to all providers at once (httpx's default in the OpenAI SDK is 1000).
MAX_CONNECTIONS = 1000
_MAX_ERROR_BODY = 64 * 1024
#: aiohttp's read buffer; a streamed line (one SSE event) may be up to twice this.
_READ_BUFSIZE = 1 << 20


@dataclass(frozen=True)
class Target:
    """Where and how to call one deployment directly."""

    model: str
    api_base: str
    headers: dict[str, str]
    config: OpenAIGPTConfig
    supported: frozenset[str]


def target_of(deployment: Deployment) -> Target | None:
    """The deployment's direct target, or None when litellm must make the call."""
    if deployment.provider != "openai" or deployment.local:
        return None
    params = deployment.params
    if not set(params) <= FAST_PARAMS or "/" not in deployment.model:
        return None
    if litellm.api_base or litellm.headers or litellm.organization:
        return None  # process-wide litellm overrides: leave them to litellm
    model = deployment.model.split("/", 1)[1]
    config = ProviderConfigManager.get_provider_chat_config(
        model=model, provider=LlmProviders.OPENAI
    )
    if type(config) not in _PLAIN_CONFIGS or not isinstance(config, OpenAIGPTConfig):
        return None
    # The same fallbacks as litellm's openai dispatch (litellm/main.py).
    api_base = (
        params.get("api_base")
        or get_secret_str("OPENAI_BASE_URL")
        or get_secret_str("OPENAI_API_BASE")
        or _DEFAULT_BASE
    )
    api_key = params.get("api_key") or litellm.api_key or litellm.openai_key
    api_key = api_key or get_secret_str("OPENAI_API_KEY")
    organization = params.get("organization") or get_secret_str("OPENAI_ORGANIZATION")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if organization:
        headers["OpenAI-Organization"] = str(organization)
    extra = params.get("extra_headers")
    if extra is not None:
        if not isinstance(extra, dict):
            return None
        headers.update({str(k): str(v) for k, v in extra.items()})
    supported = frozenset(config.get_supported_openai_params(model))
    return Target(model, str(api_base).rstrip("/"), headers, config, supported)


class FastPath:
    """Direct calls for the deployments that have a :class:`Target`; one connection pool
    per process, opened on first use and closed by :meth:`aclose`."""

    def __init__(self, config: GatewayConfig) -> None:
        self._targets = {
            id(d): t
            for a in config.aliases.values()
            for d in a.deployments
            if (t := target_of(d)) is not None
        }
        self._session: aiohttp.ClientSession | None = None
        # Only to build the SDK's status errors (no request is ever sent through it).
        self._sdk = openai.AsyncOpenAI(api_key="unused", base_url="http://127.0.0.1/")

    def target(self, deployment: Deployment) -> Target | None:
        return self._targets.get(id(deployment))

    def body(
        self, target: Target, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> dict[str, Any] | None:
        """litellm's request body for this target, or None for litellm to handle the call
        (a parameter the model does not take: litellm raises its own error for it)."""
        if not set(params) <= target.supported:
            return None
        out: dict[str, Any] = {**params}
        if any(m.get("role") == "developer" for m in messages):
            translated: Any = target.config.translate_developer_role_to_system_role(
                [dict(m) for m in messages],  # type: ignore[misc]  # copies: litellm edits in place
                model=target.model,
                custom_llm_provider="openai",
                api_base=target.api_base,
                model_info=None,
            )
            messages = list(translated)
        if out.get("tools"):
            out.update(
                target.config._sanitized_tools_update_for_openai(
                    out, {"custom_llm_provider": "openai", "api_base": target.api_base}
                )
            )
        else:
            out.pop("tool_choice", None)
        return {"model": target.model, "messages": messages, **out}

    # ------------------------------------------------------------- calls

    async def complete(self, target: Target, body: dict[str, Any], timeout: float) -> llm.Answer:
        data = await self._post(target, "/chat/completions", body, timeout)
        answer = llm.answer_of(data)
        answer.finish_reason = map_finish_reason(answer.finish_reason)  # as litellm's Choices
        return answer

    async def open_stream(
        self, target: Target, body: dict[str, Any], timeout: float
    ) -> tuple[Any, AsyncIterator[Any]]:
        """As :func:`llm.open_stream`: the first chunk, then an iterator of the rest."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        session = self._pool()
        url = target.api_base + "/chat/completions"
        # Per read, as the SDK's httpx timeout: a long stream is fine while tokens arrive.
        limit = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        response = await _send(session, url, target, body, limit)
        if response.status >= 300:
            async with response:
                raise await self._status_error(target, response)
        iterator = _chunks(response)
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            raise MalformedAnswer("the model provider ended the stream at once") from None
        except BaseException:
            await iterator.aclose()
            raise
        return first, iterator

    async def embed(
        self, target: Target, texts: list[str], dimensions: int | None, timeout: float
    ) -> tuple[list[list[float]], Usage]:
        body: dict[str, Any] = {"model": target.model, "input": texts}
        if dimensions is not None:
            body["dimensions"] = dimensions
        data = await self._post(target, "/embeddings", body, timeout)
        rows = data.get("data")
        if not isinstance(rows, list) or len(rows) != len(texts):
            raise MalformedAnswer("the model provider answered with the wrong number of vectors")
        rows = sorted(rows, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
        vectors = [_vector(r.get("embedding") if isinstance(r, dict) else None) for r in rows]
        return vectors, llm.usage_of(data.usage)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------- HTTP

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # litellm's own TLS settings (SSL_VERIFY, SSL_CERT_FILE, litellm.ssl_verify,
            # else certifi's CAs) and, as httpx, proxies from the environment.
            tls = get_ssl_configuration()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=MAX_CONNECTIONS,
                    limit_per_host=0,
                    ssl=tls if isinstance(tls, ssl.SSLContext) else tls is not False,
                ),
                trust_env=True,
                read_bufsize=_READ_BUFSIZE,
            )
        return self._session

    async def _post(
        self, target: Target, path: str, body: dict[str, Any], timeout: float
    ) -> llm.Record:
        limit = aiohttp.ClientTimeout(total=timeout)
        async with await _send(self._pool(), target.api_base + path, target, body, limit) as r:
            if r.status >= 300:
                raise await self._status_error(target, r)
            try:
                raw = await r.read()
            except TimeoutError:
                raise
            except aiohttp.ClientError as exc:  # cut off mid-answer
                raise ConnectionError("the model provider broke off the answer") from exc
        data = json.loads(raw)  # ValueError: malformed, mapped as litellm's parse failures
        if not isinstance(data, dict):
            raise MalformedAnswer("the model provider answered with something else than JSON")
        return llm.Record(data)

    async def _status_error(
        self, target: Target, response: aiohttp.ClientResponse
    ) -> BaseException:
        """The exception litellm raises for this HTTP answer."""
        content = await response.content.read(_MAX_ERROR_BODY)
        request = httpx.Request("POST", str(response.url))
        # An httpx response, as litellm's own OpenAI client hands the SDK (duck-typed there).
        sdk_error = self._sdk._make_status_error_from_response(
            httpx.Response(  # type: ignore[arg-type]
                response.status,
                headers=list(response.headers.items()),
                content=content,
                request=request,
            )
        )
        error = OpenAIError(  # as litellm's OpenAIChatCompletion.acompletion wraps it
            status_code=response.status,
            message=getattr(sdk_error, "message", str(sdk_error)),
            response=upstream_error_response(sdk_error),
            headers=dict(sdk_error.response.headers),
            body=sdk_error.body if isinstance(sdk_error.body, dict) else None,
        )
        try:
            exception_type(
                model=target.model, original_exception=error, custom_llm_provider="openai"
            )
        except Exception as mapped:
            return mapped
        return error


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    target: Target,
    body: dict[str, Any],
    timeout: aiohttp.ClientTimeout,
) -> aiohttp.ClientResponse:
    try:
        return await session.post(
            url, data=json.dumps(body).encode(), headers=target.headers, timeout=timeout
        )
    except TimeoutError:
        raise  # aiohttp's timeouts are TimeoutErrors (and some also connection errors)
    except aiohttp.ClientConnectionError as exc:
        raise ConnectionError(str(exc) or type(exc).__name__) from exc


async def _chunks(response: aiohttp.ClientResponse) -> AsyncGenerator[Any]:
    """Server-sent events of an OpenAI stream, as records, until ``[DONE]``."""
    try:
        async for line in response.content:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return
            if not payload:
                continue
            chunk = json.loads(payload)
            if not isinstance(chunk, dict):
                raise MalformedAnswer("the model provider streamed something else than JSON")
            if "error" in chunk and not chunk.get("choices"):
                # vLLM/sglang report a failure mid-stream as an error chunk with status 200.
                raise MalformedAnswer("the model provider failed during the stream")
            for choice in chunk.get("choices") or ():
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    choice["finish_reason"] = map_finish_reason(choice["finish_reason"])
            yield llm.Record(chunk)
    except TimeoutError:
        raise
    except aiohttp.ClientPayloadError as exc:
        raise ConnectionError("the model provider broke off the stream") from exc
    except aiohttp.ClientConnectionError as exc:
        raise ConnectionError(str(exc) or type(exc).__name__) from exc
    finally:
        response.release()


def _vector(raw: Any) -> list[float]:
    if isinstance(raw, list):
        return raw
    if isinstance(raw, str):  # encoding_format base64: little-endian float32
        data = base64.b64decode(raw)
        return list(struct.unpack(f"<{len(data) // 4}f", data))
    raise MalformedAnswer("the model provider answered without vectors")
