"""Compiling, caching and rendering templates in the sandbox, off the event loop.

Renders run in a small thread pool so a heavy template never stalls the worker's event
loop; each render carries a :class:`~workers.prompt.sandbox.Budget` whose checkpoints stop
it in bounded time, and the caller stops waiting shortly after the limit whatever happens.
Compiled templates are cached per ``(tenant, template_id, version)``: versions are
immutable, so an entry never goes stale and needs no invalidation (and holds no client
state: any replica compiles the same thing from Postgres).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from jinja2 import Template, meta, nodes
from jinja2.exceptions import (
    SecurityError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)

from bus.errors import InvalidRequest
from workers.prompt.sandbox import (
    Budget,
    Limits,
    MissingVariable,
    PromptSandbox,
    RenderLimitExceeded,
    run_bounded,
)

_log = structlog.get_logger(__name__)

#: Threads rendering at once; more renders queue (the worker's concurrency bounds both).
DEFAULT_RENDER_THREADS = 4
#: Compiled versions kept in memory.
DEFAULT_CACHE_SIZE = 2048
#: How long after the render limit the caller still waits for a render to stop itself.
GRACE_S = 1.0

T = TypeVar("T")

#: (tenant, template_id, version)
CacheKey = tuple[str, str, int]


@dataclass(frozen=True)
class Source:
    """One version's bodies, ready to compile."""

    key: CacheKey
    name: str
    type: str
    template: str | None
    messages: list[dict[str, str]] | None


@dataclass(frozen=True)
class Analysis:
    variables: list[str]
    """Top-level names the bodies read (``jinja2.meta.find_undeclared_variables``)."""
    refs: list[str]
    """Literal include/import/extends targets, in order of first appearance."""


@dataclass(frozen=True)
class Rendered:
    text: str | None = None
    messages: list[dict[str, str]] | None = None


def _bodies(type_: str, template: str | None, messages: list[dict[str, str]] | None) -> list[str]:
    if type_ == "text":
        return [template or ""]
    return [m["content"] for m in messages or []]


class Renderer:
    def __init__(
        self,
        limits: Limits | None = None,
        threads: int = DEFAULT_RENDER_THREADS,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.limits = limits or Limits()
        self.env = PromptSandbox(self.limits)
        self.cache_size = cache_size
        self._cache: OrderedDict[CacheKey, tuple[Template, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="prompt-render")
        self.compiles = 0
        """Templates compiled so far (cache misses); tests and metrics read it."""

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- save time -------------------------------------------------------------------

    async def analyze(
        self, type_: str, template: str | None, messages: list[dict[str, str]] | None
    ) -> Analysis:
        """Parse and compile the bodies; their variables and references, or InvalidRequest."""
        return await self._run(lambda: self._analyze(_bodies(type_, template, messages), type_))

    def _analyze(self, bodies: list[str], type_: str) -> Analysis:
        variables: dict[str, None] = {}
        refs: dict[str, None] = {}
        for index, body in enumerate(bodies):
            where = "" if type_ == "text" else f" (message {index})"
            try:
                tree = self.env.parse(body)
                self.env.compile(tree)
            except TemplateSyntaxError as exc:
                raise InvalidRequest(
                    f"template syntax error{where}: {exc.message} (line {exc.lineno})",
                    {"line": exc.lineno, "message": index if type_ == "chat" else None},
                ) from None
            except RecursionError:
                raise InvalidRequest(f"template nests too deeply{where}") from None
            except Exception as exc:  # compile-time faults (unknown filter, …) are the author's
                raise _template_error(exc, index if type_ == "chat" else None) from None
            names = meta.find_undeclared_variables(tree) - set(self.env.globals)
            variables.update(dict.fromkeys(sorted(names)))
            for node in tree.find_all(
                (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)
            ):
                assert isinstance(
                    node, nodes.Include | nodes.Import | nodes.FromImport | nodes.Extends
                )
                target = node.template
                if not (isinstance(target, nodes.Const) and isinstance(target.value, str)):
                    raise InvalidRequest(
                        f"include/import/extends targets must be string literals{where}"
                    )
                refs[target.value] = None
        return Analysis(variables=list(variables), refs=list(refs))

    # -- render time -----------------------------------------------------------------

    async def render(
        self, root: Source, includes: dict[str, Source], variables: dict[str, Any]
    ) -> Rendered:
        """Render ``root`` with ``variables``; ``includes`` maps each reference string the
        tree uses to its resolved version. Template faults become ``InvalidRequest``."""
        return await self._run(lambda: self._render(root, includes, variables))

    def _render(
        self, root: Source, includes: dict[str, Source], variables: dict[str, Any]
    ) -> Rendered:
        budget = Budget(self.limits)
        for ref, source in includes.items():
            budget.refs[ref] = self._compiled(source)[0]
        compiled = self._compiled(root)
        if root.type == "text":
            return Rendered(text=self._render_one(compiled[0], variables, budget, None))
        assert root.messages is not None
        return Rendered(
            messages=[
                {"role": m["role"], "content": self._render_one(tpl, variables, budget, i)}
                for i, (m, tpl) in enumerate(zip(root.messages, compiled, strict=True))
            ]
        )

    def _render_one(
        self, template: Template, variables: dict[str, Any], budget: Budget, index: int | None
    ) -> str:
        try:
            text: str = run_bounded(budget, lambda: template.render(variables))
            return text
        except Exception as exc:
            raise _template_error(exc, index) from None

    def _compiled(self, source: Source) -> tuple[Template, ...]:
        with self._lock:
            hit = self._cache.get(source.key)
            if hit is not None:
                self._cache.move_to_end(source.key)
                return hit

        # Compiled outside the budget on purpose: Jinja folds constant expressions at
        # compile time, and with no budget every checkpoint refuses, so nothing a template
        # computes runs before render time (where it is charged).
        bodies = _bodies(source.type, source.template, source.messages)
        try:
            compiled = tuple(self.env.from_string(body) for body in bodies)
        except Exception as exc:
            raise _template_error(exc, None) from None
        with self._lock:
            self.compiles += 1
            self._cache[source.key] = compiled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def cached(self, key: CacheKey) -> bool:
        with self._lock:
            return key in self._cache

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a render thread; stop waiting ``GRACE_S`` after the render limit.

        The limit starts when a thread picks the job up, so time spent queued behind other
        renders counts against the request's deadline (``timeout``), not the template.
        """
        loop = asyncio.get_running_loop()
        job = _Job(fn)
        future = loop.run_in_executor(self._pool, job.run)
        # Whatever happens to the caller, retrieve the outcome so it is never "unretrieved".
        future.add_done_callback(_retrieve)
        allowed = self.limits.timeout_s + GRACE_S
        wait = allowed
        try:
            while True:
                done, _ = await asyncio.wait((future,), timeout=wait)
                if done:
                    return future.result()
                if job.started is None:  # still queued: the request deadline bounds this
                    continue
                wait = job.started + allowed - time.monotonic()
                if wait <= 0:
                    _log.warning("render_overran", limit_s=self.limits.timeout_s)
                    raise InvalidRequest(
                        f"render exceeded the time limit of {self.limits.timeout_s:g} s"
                    )
        except asyncio.CancelledError:
            job.cancelled = True
            raise


class _Job:
    """A render handed to a thread: when it started, and whether its caller gave up."""

    __slots__ = ("cancelled", "fn", "started")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.started: float | None = None
        self.cancelled = False

    def run(self) -> Any:
        self.started = time.monotonic()
        if self.cancelled:  # the caller gave up while this was queued
            raise InvalidRequest("render cancelled")
        return self.fn()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _template_error(exc: BaseException, index: int | None) -> InvalidRequest:
    """Describe a template fault for its author; never anything about the server."""
    where = "" if index is None else f" (message {index})"
    details: dict[str, Any] = {} if index is None else {"message": index}
    if isinstance(exc, InvalidRequest):
        return exc
    if isinstance(exc, MissingVariable):
        return InvalidRequest(
            f"missing variable {exc.name!r}{where}", {**details, "missing": [exc.name]}
        )
    if isinstance(exc, RenderLimitExceeded):
        return InvalidRequest(f"{exc}{where}", {**details, "limit": True})
    if isinstance(exc, SecurityError):
        return InvalidRequest(f"unsafe template operation{where}: {exc}", details or None)
    if isinstance(exc, TemplateNotFound):
        return InvalidRequest(
            f"included template {exc.name!r} not found{where}",
            {**details, "include": exc.name},
        )
    if isinstance(exc, TemplateSyntaxError):
        return InvalidRequest(f"template syntax error{where}: {exc.message} (line {exc.lineno})")
    if isinstance(exc, UndefinedError):
        return InvalidRequest(f"undefined value{where}: {exc.message}", details or None)
    if isinstance(exc, RecursionError):
        return InvalidRequest(f"template nests or recurses too deeply{where}", details or None)
    if isinstance(exc, MemoryError):
        return InvalidRequest(f"template needs too much memory{where}", details or None)
    message = str(exc)[:200]
    return InvalidRequest(
        f"template error{where}: {type(exc).__name__}: {message}", details or None
    )
