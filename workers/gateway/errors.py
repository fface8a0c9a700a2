"""litellm's exceptions onto the mesh's error contract — the one place they are translated.

========================================  ==================  ======  ========  =========
provider answer / failure                 code                retry   fallback  cools the
                                                              (same   (next     deployment
                                                              alias)  alias)
========================================  ==================  ======  ========  =========
400, 422 (bad request, unsupported param)  invalid_request     no      no        no
context window exceeded                   invalid_request     no      context   no
                                                                      window
                                                                      fallbacks
401, 403, 404 (our key/model config)      upstream_error      no      yes       yes
429                                       rate_limited        yes     yes       yes
5xx, malformed or empty answer            upstream_error      yes     yes       yes
connection refused/reset, DNS             unavailable         yes     yes       yes
provider slower than the model timeout    timeout             yes     yes       yes
all deployments cooling down              unavailable         —       yes       —
========================================  ==================  ======  ========  =========

A provider 401/403 means the *gateway's* credentials or model access are wrong, which the
caller can neither fix nor should be told about as if it were their own authentication:
it is ``upstream_error`` (502) and logged as a configuration problem.

Messages never carry provider internals: a short provider explanation is kept only for
``invalid_request`` (so a caller learns *why*, e.g. the context length), with secrets and
URLs scrubbed.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import litellm
import openai

from bus.errors import (
    InvalidRequest,
    MeshError,
    RateLimited,
    Timeout,
    Unavailable,
    UpstreamError,
)

_URL = re.compile(r"https?://\S+")
_LITELLM_PREFIX = re.compile(r"^(litellm\.\w+:\s*)?(\w+Error:\s*)?(\w+Exception\s*-\s*)?")
_MAX_DETAIL = 300


class ContextWindowExceeded(InvalidRequest):
    """The prompt does not fit the model: ``invalid_request``, eligible for context-window
    fallbacks."""


class ProviderConfigError(UpstreamError):
    """The provider refused the gateway's own credentials or model name (401/403/404)."""


class MalformedAnswer(UpstreamError):
    """The provider answered something that is not a usable completion."""


def retryable(error: MeshError) -> bool:
    """Worth another attempt on the same alias (another deployment, or the same later)."""
    return isinstance(error, RateLimited | Timeout | Unavailable) or (
        type(error) is UpstreamError or isinstance(error, MalformedAnswer)
    )


def falls_back(error: MeshError) -> bool:
    """Worth trying the alias's fallbacks once its own attempts are spent."""
    return not isinstance(error, InvalidRequest)


def counts_against_deployment(error: MeshError) -> bool:
    return not isinstance(error, InvalidRequest)


_NOT_INSTALLED = re.compile(r"the local model (?:needs the package|file) [^\n]{1,300}")


def _model_not_installed(exc: BaseException) -> str | None:
    """The install hint of a missing local model, wherever litellm wrapped it."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e).__name__ == "ModelNotInstalled":  # workers.gateway.local, not imported here
            return str(e)
        todo += [e.__cause__, e.__context__, getattr(e, "original_exception", None)]
    m = _NOT_INSTALLED.search(str(exc))
    return m.group(0) if m else None


def map_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> MeshError:
    """Translate an exception raised by a litellm call into the error contract."""
    if isinstance(exc, MeshError):
        return exc
    if isinstance(exc, litellm.ContextWindowExceededError):
        return ContextWindowExceeded(
            "the prompt exceeds the model's context window", _detail(exc, secrets)
        )
    if isinstance(exc, litellm.UnsupportedParamsError):
        return InvalidRequest("the model does not support a parameter", _detail(exc, secrets))
    missing = _model_not_installed(exc)
    if missing is not None:
        # Not "cannot be reached" (retried, then a breaker): say what to install.
        return ProviderConfigError(missing)
    if isinstance(exc, litellm.Timeout | TimeoutError | httpx.TimeoutException):
        return Timeout("the model provider did not answer in time")
    if _connection_failure(exc):
        return Unavailable("the model provider cannot be reached")
    status = getattr(exc, "status_code", None)
    if isinstance(exc, litellm.RateLimitError) or status == 429:
        return RateLimited("the model provider is rate limiting", _retry_after(exc))
    if status in (401, 403, 404):
        return ProviderConfigError(
            f"the model provider refused the gateway's configuration ({status})"
        )
    if status in (400, 413, 422) or isinstance(exc, litellm.BadRequestError):
        return InvalidRequest("the model provider rejected the request", _detail(exc, secrets))
    if isinstance(status, int) and status >= 500:
        return UpstreamError(f"the model provider failed ({status})")
    if isinstance(exc, openai.APIError):
        return UpstreamError("the model provider failed")
    if isinstance(exc, ValueError | KeyError | TypeError | AttributeError | IndexError):
        # litellm raises these when it cannot parse what a provider sent.
        return MalformedAnswer("the model provider sent a malformed answer")
    return UpstreamError("the model call failed")


def _connection_failure(exc: BaseException) -> bool:
    """litellm wraps a refused connection as a 500: look down the cause chain."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, openai.APITimeoutError):
            return False
        if isinstance(cur, openai.APIConnectionError | httpx.ConnectError | ConnectionError):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _retry_after(exc: BaseException) -> dict[str, Any] | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        value = float(headers.get("retry-after", ""))
    except ValueError:
        return None
    return {"retry_after": value}


def _detail(exc: BaseException, secrets: tuple[str, ...]) -> dict[str, str]:
    text = str(getattr(exc, "message", None) or exc)
    text = _LITELLM_PREFIX.sub("", text.strip())
    for secret in secrets:
        text = text.replace(secret, "***")
    text = _URL.sub("<url>", text)
    return {"provider_message": text[:_MAX_DETAIL]}
