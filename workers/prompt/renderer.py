"""Compiling, caching and rendering templates in the sandbox, in killable processes.

Parsing, compiling and rendering a user's template is CPU work whose cost the user
controls, and Jinja (like ``re``) holds the GIL, so it runs in the prompt pool of
:mod:`bus.offload`: each render carries a :class:`~workers.prompt.sandbox.Budget` whose
checkpoints stop it in bounded time with a precise message, and the pool kills the
process if a render still overruns (code between checkpoints, a C routine), so the
worker's event loop never stalls. Time spent queued counts against the request's
deadline (``timeout``), not the template.

Compiled templates are cached per ``(tenant, template_id, version)``: versions are
immutable, so an entry never goes stale and needs no invalidation (and holds no client
state: any replica compiles the same thing from Postgres). The worker keeps the Python
code Jinja generated for each version and sends it with each render; each process keeps
its own cache of loaded templates, so a template is compiled once per worker, not once
per process.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import structlog
from jinja2 import Template, meta, nodes
from jinja2.exceptions import (
    SecurityError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)

from bus import offload
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

#: Compiled versions kept in memory (by the worker, and by each render process).
DEFAULT_CACHE_SIZE = 2048
#: How long after the render limit the process running a render is killed.
GRACE_S = 1.0
#: The bus.offload pool renders run in.
POOL = "prompt"

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
    code: tuple[str, ...] | None = None
    """The Python code Jinja generated for the bodies, once compiled (see the module doc)."""


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
    """The worker's side: the cache of generated code, and calls into the render pool."""

    def __init__(self, limits: Limits | None = None, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.limits = limits or Limits()
        self.cache_size = cache_size
        self._code: OrderedDict[CacheKey, tuple[str, ...]] = OrderedDict()
        self.compiles = 0
        """Templates compiled so far (cache misses); tests and metrics read it."""

    def close(self) -> None:
        """Nothing to release: the render processes belong to bus.offload's pools."""

    # -- save time -------------------------------------------------------------------

    async def analyze(
        self,
        type_: str,
        template: str | None,
        messages: list[dict[str, str]] | None,
        *,
        key: str = "",
    ) -> Analysis:
        """Parse and compile the bodies; their variables and references, or InvalidRequest."""
        bodies = _bodies(type_, template, messages)
        return await self._run(analyze_in_process, self.limits, bodies, type_, key=key)  # type: ignore[no-any-return]

    # -- render time -----------------------------------------------------------------

    async def render(
        self, root: Source, includes: dict[str, Source], variables: dict[str, Any]
    ) -> Rendered:
        """Render ``root`` with ``variables``; ``includes`` maps each reference string the
        tree uses to its resolved version. Template faults become ``InvalidRequest``."""
        root = self._with_code(root)
        includes = {ref: self._with_code(src) for ref, src in includes.items()}
        rendered, compiled = await self._run(
            render_in_process, self.limits, root, includes, variables, key=root.key[0]
        )
        for cache_key, code in compiled.items():
            self.compiles += 1
            self._code[cache_key] = code
        while len(self._code) > self.cache_size:
            self._code.popitem(last=False)
        return rendered  # type: ignore[no-any-return]

    def _with_code(self, source: Source) -> Source:
        code = self._code.get(source.key)
        if code is None:
            return source
        self._code.move_to_end(source.key)
        return dataclasses.replace(source, code=code)

    def cached(self, key: CacheKey) -> bool:
        return key in self._code

    async def _run(self, fn: Any, *args: Any, key: str) -> Any:
        limit = self.limits.timeout_s
        try:
            return await offload.run(
                fn,
                *args,
                budget=limit + GRACE_S,
                key=key,
                what="rendering the template",
                pool=POOL,
            )
        except offload.BudgetExceeded:
            _log.warning("render_overran", limit_s=limit)
            raise InvalidRequest(
                f"render exceeded the time limit of {limit:g} s", {"limit": True}
            ) from None


# -- the process side (bus.offload runs these by name) ------------------------------


class _Core:
    """One process's sandbox and loaded templates."""

    def __init__(self, limits: Limits, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.env = PromptSandbox(limits)
        self.limits = limits
        self.cache_size = cache_size
        self.templates: OrderedDict[CacheKey, tuple[Template, ...]] = OrderedDict()

    def analyze(self, bodies: list[str], type_: str) -> Analysis:
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

    def render(
        self, root: Source, includes: dict[str, Source], variables: dict[str, Any]
    ) -> tuple[Rendered, dict[CacheKey, tuple[str, ...]]]:
        compiled: dict[CacheKey, tuple[str, ...]] = {}
        budget = Budget(self.limits)
        for ref, source in includes.items():
            budget.refs[ref] = self._compiled(source, compiled)[0]
        templates = self._compiled(root, compiled)
        if root.type == "text":
            text = self._render_one(templates[0], variables, budget, None)
            return Rendered(text=text), compiled
        assert root.messages is not None
        messages = [
            {"role": m["role"], "content": self._render_one(tpl, variables, budget, i)}
            for i, (m, tpl) in enumerate(zip(root.messages, templates, strict=True))
        ]
        return Rendered(messages=messages), compiled

    def _render_one(
        self, template: Template, variables: dict[str, Any], budget: Budget, index: int | None
    ) -> str:
        try:
            text: str = run_bounded(budget, lambda: template.render(variables))
            return text
        except Exception as exc:
            raise _template_error(exc, index) from None

    def _compiled(
        self, source: Source, compiled: dict[CacheKey, tuple[str, ...]]
    ) -> tuple[Template, ...]:
        hit = self.templates.get(source.key)
        if hit is not None:
            self.templates.move_to_end(source.key)
            return hit
        # Compiled outside the budget on purpose: Jinja folds constant expressions at
        # compile time, and with no budget every checkpoint refuses, so nothing a template
        # computes runs before render time (where it is charged).
        code = source.code
        try:
            if code is None:
                bodies = _bodies(source.type, source.template, source.messages)
                code = tuple(self.env.compile(body, raw=True) for body in bodies)
                compiled[source.key] = code
            templates = tuple(
                Template.from_code(
                    self.env, compile(c, "<template>", "exec"), self.env.make_globals(None), None
                )
                for c in code
            )
        except Exception as exc:
            raise _template_error(exc, None) from None
        self.templates[source.key] = templates
        while len(self.templates) > self.cache_size:
            self.templates.popitem(last=False)
        return templates


_cores: dict[Limits, _Core] = {}


def _core(limits: Limits) -> _Core:
    core = _cores.get(limits)
    if core is None:
        core = _cores[limits] = _Core(limits)
    return core


def analyze_in_process(limits: Limits, bodies: list[str], type_: str) -> Analysis:
    return _core(limits).analyze(bodies, type_)


def render_in_process(
    limits: Limits, root: Source, includes: dict[str, Source], variables: dict[str, Any]
) -> tuple[Rendered, dict[CacheKey, tuple[str, ...]]]:
    return _core(limits).render(root, includes, variables)


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
