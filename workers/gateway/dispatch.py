"""Aliases to deployments: retries, fallbacks, cooldowns and timeouts, inside the deadline.

The gateway's own loop around ``litellm.acompletion``/``aembedding`` rather than
``litellm.Router``: the Router costs 1–3 ms of CPU per call on top of litellm's own 3–5 ms
(measured on this hardware; see docs/services/gateway.md), and its retries and timeouts
do not know the request's deadline. Semantics follow the Router's: ``num_retries`` more
attempts per alias (rotating over its deployments), then each of the alias's
``fallbacks`` in order; ``context_window_fallbacks`` only for a prompt that does not fit;
a deployment that fails ``allowed_fails`` times in a row cools down for ``cooldown_time``
seconds (a circuit breaker; half-open after it).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from bus.breaker import BreakerConfig, CircuitBreaker
from bus.context import remaining
from bus.errors import InvalidRequest, MeshError, NotFound, RateLimited, Timeout, Unavailable
from schemas.context import Context
from workers.gateway.config import Alias, Deployment, GatewayConfig, Mode
from workers.gateway.errors import (
    ContextWindowExceeded,
    counts_against_deployment,
    falls_back,
    map_error,
    retryable,
)

_log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Kept back from the deadline so the gateway answers ``timeout`` itself, in time.
DEADLINE_MARGIN_S = 0.05
#: An attempt with less time than this left is not started.
MIN_ATTEMPT_S = 0.1
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 2.0
#: Longest ``Retry-After`` the gateway waits out before moving on to a fallback.
MAX_RETRY_AFTER_S = 5.0

Attempt = Callable[[Deployment, float], Awaitable[T]]


@dataclass(frozen=True)
class Outcome(Generic[T]):
    value: T
    alias: Alias
    deployment: Deployment
    attempts: int


class AttemptsFailed(Exception):
    """Carries the error to answer and how many attempts were made (for the event)."""

    def __init__(self, error: MeshError, attempts: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts


class Dispatcher:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        breaker = BreakerConfig(
            failure_threshold=config.allowed_fails, reset_timeout=config.cooldown
        )
        self._breakers = {
            id(d): CircuitBreaker(f"{d.alias}#{i}", breaker)
            for a in config.aliases.values()
            for i, d in enumerate(a.deployments)
        }
        self._turn: dict[str, int] = {}

    def resolve(self, name: str | None, mode: Mode) -> Alias:
        name = name or self.config.default_for(mode)
        if name is None:
            raise NotFound(f"no {mode} model is configured")
        alias = self.config.aliases.get(name)
        if alias is None:
            raise NotFound(f"unknown model alias {name!r}; gateway.models lists them")
        if alias.mode != mode and alias.mode_known:
            raise InvalidRequest(
                f"{name!r} is a {alias.mode} model, not a {mode} model (if that is wrong, "
                f"declare it in the model table: model_info: {{mode: {mode}}})"
            )
        return alias

    async def call(self, alias: Alias, ctx: Context, attempt: Attempt[T]) -> Outcome[T]:
        """Run ``attempt(deployment, timeout)`` until one succeeds, within the deadline.

        Raises :class:`AttemptsFailed` with the error to answer.
        """
        queue = [alias, *(self.config.aliases[f] for f in alias.fallbacks)]
        attempts = 0
        last: MeshError = Unavailable(f"no deployment of {alias.name!r} could be tried")
        i = 0
        while i < len(queue):
            current = queue[i]
            i += 1
            for n in range(self.config.num_retries + 1):
                deployment = self._pick(current)
                if deployment is None:
                    if n == 0:  # else the failure that cooled it down is the better answer
                        last = Unavailable(f"every deployment of {current.name!r} is cooling down")
                    break
                breaker = self._breakers[id(deployment)]
                try:
                    timeout = self._timeout(deployment, ctx)
                except Timeout as exc:
                    breaker.release_probe()
                    raise AttemptsFailed(exc, attempts) from None
                attempts += 1
                try:
                    value = await attempt(deployment, timeout)
                except asyncio.CancelledError:
                    breaker.release_probe()
                    raise
                except Exception as exc:
                    error = map_error(exc, self.config.secrets)
                    if counts_against_deployment(error):
                        breaker.record_failure()
                    else:
                        breaker.record_success()  # it answered: it is alive
                    _log.warning(
                        "llm_attempt_failed",
                        alias=current.name,
                        provider=deployment.provider,
                        code=error.code,
                        error=type(exc).__name__,
                        attempt=attempts,
                    )
                    last = error
                    if isinstance(error, ContextWindowExceeded):
                        # Only a model with a larger window can help: those come next.
                        larger = [self.config.aliases[f] for f in current.context_window_fallbacks]
                        larger = [a for a in larger if a not in queue[:i]]
                        if not larger:
                            raise AttemptsFailed(error, attempts) from exc
                        queue[i:i] = larger
                        break
                    if not falls_back(error):
                        raise AttemptsFailed(error, attempts) from exc
                    if not retryable(error) or n == self.config.num_retries:
                        break
                    if isinstance(error, RateLimited) and (
                        (error.retry_after or 0) > MAX_RETRY_AFTER_S
                    ):
                        break  # not worth waiting for: a fallback may answer now
                    pause = _backoff(n, error)
                    left = remaining(ctx)
                    if left is not None and left - pause < MIN_ATTEMPT_S + DEADLINE_MARGIN_S:
                        break
                    await asyncio.sleep(pause)
                    continue
                breaker.record_success()
                return Outcome(value, current, deployment, attempts)
        raise AttemptsFailed(last, attempts)

    def _pick(self, alias: Alias) -> Deployment | None:
        """The next deployment in turn whose breaker lets a call through."""
        deployments = alias.deployments
        start = self._turn.get(alias.name, 0)
        self._turn[alias.name] = start + 1
        for k in range(len(deployments)):
            deployment = deployments[(start + k) % len(deployments)]
            try:
                self._breakers[id(deployment)].before_call()
            except Unavailable:
                continue
            return deployment
        return None

    def _timeout(self, deployment: Deployment, ctx: Context) -> float:
        timeout = deployment.timeout or self.config.timeout
        left = remaining(ctx)
        if left is None:
            return timeout
        left -= DEADLINE_MARGIN_S
        if left < MIN_ATTEMPT_S:
            raise Timeout("the deadline passed before the model could be called")
        return min(timeout, left)


def _backoff(n: int, error: MeshError) -> float:
    if isinstance(error, RateLimited) and error.retry_after is not None:
        return min(error.retry_after, MAX_RETRY_AFTER_S)
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**n)) + 0.01
