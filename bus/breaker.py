"""A circuit breaker per subject: closed → open after N failures → half-open probe → closed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from bus.errors import Unavailable

State = Literal["closed", "open", "half_open"]

_log = structlog.get_logger(__name__)

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_RESET_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    """Consecutive retryable failures (unavailable, timeout) that open the circuit."""
    reset_timeout: float = DEFAULT_RESET_TIMEOUT_S
    """Seconds the circuit stays open before one probe call is let through."""


class CircuitBreaker:
    """Fails fast with ``Unavailable`` while a subject keeps failing.

    ``on_change(subject, old, new)`` observes transitions (logs always record them).
    """

    def __init__(
        self,
        subject: str,
        config: BreakerConfig | None = None,
        on_change: Callable[[str, State, State], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.subject = subject
        self.config = config or BreakerConfig()
        self._on_change = on_change
        self._clock = clock
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() - self._opened_at >= self.config.reset_timeout:
            return "half_open"
        return self._state

    def before_call(self) -> None:
        """Raise ``Unavailable`` unless a call may go through now."""
        state = self.state
        if state == "closed":
            return
        if state == "half_open" and not self._probing:
            self._set("half_open")
            self._probing = True
            return
        raise Unavailable(f"circuit open for {self.subject}")

    def record_success(self) -> None:
        self._failures = 0
        self._probing = False
        if self._state != "closed":
            self._set("closed")

    def record_failure(self) -> None:
        self._failures += 1
        was_probe, self._probing = self._probing, False
        if was_probe or self._failures >= self.config.failure_threshold:
            self._opened_at = self._clock()
            self._set("open")

    def release_probe(self) -> None:
        """Forget a probe that ended without an answer (cancelled), so another may run."""
        self._probing = False

    def _set(self, new: State) -> None:
        old = self._state
        if old == new:
            return
        self._state = new
        _log.warning("circuit_state", subject=self.subject, old=old, new=new)
        if self._on_change is not None:
            self._on_change(self.subject, old, new)
