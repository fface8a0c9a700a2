"""A Jinja2 sandbox for user-authored prompt templates, bounded in size and time.

Jinja2's :class:`ImmutableSandboxedEnvironment` already refuses private and internal
attributes (``__class__``, ``__globals__``, ``_TemplateReference__context``, …) and
mutation of lists and dicts. It does not bound work: ``'a' * 10**9``, a macro that
doubles a string forty times or nested loops over ``range`` run until memory or patience
runs out, and a CPU-bound render cannot be interrupted from asyncio. So every way a
template can make work or data goes through a checkpoint that charges a per-render
:class:`Budget` (output characters, loop iterations, a deadline) and refuses values
larger than the output limit *before* building them:

- output: every ``{{ … }}`` and every piece of literal text, also inside macros, blocks and
  ``{% set %}`` blocks, is charged (so text built and thrown away counts too);
- loops: each ``for`` iterable (and a recursive ``loop(...)``) is wrapped in a counting
  iterator; ``range`` is capped;
- operators ``+ * ** %`` and ``~`` are intercepted and size-checked before they run;
- calls (macros, globals, methods) and filters tick the deadline and refuse oversized
  results; methods of builtin types and the size-taking filters (``center``, ``indent``,
  ``truncate``…) also refuse integer arguments above a cap;
- list, tuple and dict literals and ``namespace`` assignments are size-checked, counting
  shared references each time (``[a, a]`` weighs twice ``a``), so no value can hide an
  exponential expansion that a later ``str()`` or comparison would pay for;
- ``str.format``/``format_map`` are unavailable (``'{0.__class__}'.format(x)`` and
  width-based blow-ups), and the ``%`` operator and ``format`` filter refuse wide fields;
  so are codecs (``encode``/``decode``) and the padding methods (``ljust``, ``zfill``…).

Every checkpoint also checks the deadline, so a render stops itself in bounded time; the
caller additionally runs it in a thread and stops waiting after the limit.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import wraps
from typing import Any

from jinja2 import StrictUndefined, nodes, pass_environment
from jinja2.compiler import CodeGenerator, Frame
from jinja2.defaults import DEFAULT_FILTERS
from jinja2.exceptions import SecurityError, TemplateNotFound, TemplateRuntimeError, UndefinedError
from jinja2.filters import do_format, do_indent, do_wordwrap, make_attrgetter
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Cycler, Joiner, Namespace, missing

#: Largest rendered output (and largest value a template may build), in characters.
DEFAULT_MAX_OUTPUT_CHARS = 1_000_000
#: Most items one ``range()`` may produce.
DEFAULT_MAX_RANGE = 10_000
#: Most loop iterations in one render, all loops together.
DEFAULT_MAX_ITERATIONS = 100_000
#: Wall-clock limit of one render (compilation included).
DEFAULT_TIMEOUT_S = 2.0
#: Largest integer argument of a call or filter (widths, counts, lengths).
DEFAULT_MAX_INT_ARG = 100_000
#: Largest integer a template may compute with ``*`` or ``**``, in bits.
MAX_INT_BITS = 4096
#: Widest field or precision in a ``%`` format.
MAX_FORMAT_WIDTH = 1_000

# Filters whose integer arguments are sizes (widths, lengths, counts of groups).
_SIZE_FILTERS = frozenset({"batch", "center", "indent", "slice", "truncate", "wordwrap"})
# Callables whose integer arguments are sizes: methods of builtin types.
_BUILTIN_CALLABLES = (types.BuiltinMethodType, types.MethodWrapperType, types.MethodDescriptorType)
# Filters a prompt has no use for and that only add attack surface (HTML builders that run
# regular expressions over the text).
_DROPPED_FILTERS = frozenset({"xmlattr", "urlize"})
#: Longest text ``wordwrap`` accepts (textwrap runs without checkpoints).
MAX_WORDWRAP_CHARS = 200_000
# str/bytes methods that build large output from small input, format with field access,
# or run codecs (punycode is quadratic in C, where no checkpoint can stop it).
_BLOCKED_STR_METHODS = frozenset(
    {
        "center",
        "decode",
        "encode",
        "expandtabs",
        "format",
        "format_map",
        "ljust",
        "rjust",
        "translate",
        "zfill",
    }
)
_SEQUENCES = (str, bytes, list, tuple)
_DIGITS = "0123456789"
#: Characters a numeric conversion can produce besides width/precision padding (a
#: 4096-bit integer has 1234 digits; a float's integer part at most 309).
_NUMBER_CHARS = 1_300


class RenderLimitExceeded(SecurityError):
    """The template tried to produce or compute more than its limits allow."""


class MissingVariable(UndefinedError):
    """A top-level variable the template uses was not given."""

    def __init__(self, name: str) -> None:
        super().__init__(f"missing variable {name!r}")
        self.name = name


@dataclass(frozen=True)
class Limits:
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    max_range: int = DEFAULT_MAX_RANGE
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_int_arg: int = DEFAULT_MAX_INT_ARG


class Budget:
    """What one render may still spend. Lives in a thread-local while the render runs."""

    __slots__ = ("deadline", "iterations_left", "limits", "output_left", "refs")

    def __init__(self, limits: Limits, refs: dict[str, Any] | None = None) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout_s
        self.output_left = limits.max_output_chars
        self.iterations_left = limits.max_iterations
        self.refs = refs or {}

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitExceeded(
                f"render exceeded the time limit of {self.limits.timeout_s:g} s"
            )


_state = threading.local()


def current_budget() -> Budget:
    budget: Budget | None = getattr(_state, "budget", None)
    if budget is None:  # template code only ever runs inside run_bounded()
        raise SecurityError("template code ran outside a bounded render")
    return budget


def run_bounded(budget: Budget, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` (compile and/or render) with ``budget`` charged by every checkpoint."""
    previous = getattr(_state, "budget", None)
    _state.budget = budget
    try:
        return fn()
    finally:
        _state.budget = previous


def weigh(value: Any, limit: int) -> int:
    """Approximate size of ``value`` once turned into text, counting shared references each
    time they appear; stops counting (returns ``limit + 1``) once past ``limit``."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, Namespace):
            attrs = object.__getattribute__(item, "_Namespace__attrs")
            total += 2 + len(attrs)
            stack.extend(attrs.values())
        else:
            total += 1
        if total > limit:
            return limit + 1
    return total


def _check_weight(value: Any, what: str) -> Any:
    budget = current_budget()
    limit = budget.limits.max_output_chars
    if weigh(value, limit) > limit:
        raise RenderLimitExceeded(f"{what} would exceed the output limit of {limit} characters")
    return value


def _check_int_args(args: Iterable[Any], kwargs: dict[str, Any], what: str) -> None:
    cap = current_budget().limits.max_int_arg
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > cap:
            raise RenderLimitExceeded(f"{what}: argument {arg} exceeds the limit of {cap}")


def _printf_fields(fmt: str) -> Iterator[tuple[str | None, str, str, str]]:
    """``(key, width, precision, conversion)`` of each ``%`` conversion in ``fmt``.

    A scanner, not a regular expression: it reads each character once (the pattern it
    replaces rescanned the rest of the text after every ``%(`` looking for ``)``, quadratic on
    ``'%(' * n``). It stops at the first incomplete conversion, where ``%`` itself raises.
    """
    n = len(fmt)
    i = fmt.find("%")
    while i != -1:
        i += 1
        key = None
        if i < n and fmt[i] == "(":
            # Python's % allows nested parentheses in the key: find the matching ")" with
            # str.find/count over ranges that never overlap (linear, and in C).
            depth, j = 1, i + 1
            while depth:
                close = fmt.find(")", j)
                if close == -1:
                    return
                depth += fmt.count("(", j, close) - 1
                j = close + 1
            key, i = fmt[i + 1 : j - 1], j
        while i < n and fmt[i] in "-+ #0":
            i += 1
        start = i
        if i < n and fmt[i] == "*":
            i += 1
        else:
            while i < n and fmt[i] in _DIGITS:
                i += 1
        width = fmt[start:i]
        precision = ""
        if i < n and fmt[i] == ".":
            i += 1
            start = i
            if i < n and fmt[i] == "*":
                i += 1
            else:
                while i < n and fmt[i] in _DIGITS:
                    i += 1
            precision = fmt[start:i]
        if i < n and fmt[i] in "hlL":
            i += 1
        if i >= n:
            return
        yield key, width, precision, fmt[i]
        i = fmt.find("%", i + 1)


def _check_printf(fmt: str, args: Any = ()) -> None:
    """Refuse wide fields, and a result over the output limit before it is built
    (``('%(a)s' * 2000) % {'a': x}`` repeats ``x`` 2000 times)."""
    limit = current_budget().limits.max_output_chars
    size = len(fmt)
    positional = iter(args if isinstance(args, tuple) else (args,))
    for key, width, precision, conversion in _printf_fields(fmt):
        for field in (width, precision):
            if field == "*" or (field and (len(field) > 9 or int(field) > MAX_FORMAT_WIDTH)):
                raise RenderLimitExceeded(
                    f"format fields wider than {MAX_FORMAT_WIDTH} are not allowed"
                )
        if conversion == "%":
            continue
        if key is not None:
            try:
                value = args[key] if not isinstance(args, tuple | str | bytes) else None
            except Exception:  # % itself raises for a missing key
                value = None
        else:
            value = next(positional, None)
        if conversion in "sra":
            # repr/ascii escape a character into at most 10 (\U0001f600).
            grow = 10 if conversion in "ra" else 1
            produced = weigh(value, limit) * grow
        else:
            produced = _NUMBER_CHARS + int(precision or 0)
        size += max(int(width or 0), produced)
        if size > limit:
            raise RenderLimitExceeded(
                f"formatting would exceed the output limit of {limit} characters"
            )


class _StrictUndefined(StrictUndefined):
    """StrictUndefined that names a missing top-level variable in a typed error."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[TemplateRuntimeError] = UndefinedError,
    ) -> None:
        super().__init__(hint, obj, name, exc)
        if exc is UndefinedError and hint is None and obj is missing and isinstance(name, str):
            self._undefined_exception = lambda _message, _name=name: MissingVariable(_name)  # type: ignore[assignment]


class _Namespace(Namespace):
    """``namespace()`` whose attributes are size-checked when assigned."""

    def __setitem__(self, name: str, value: Any) -> None:
        _check_weight(value, "namespace assignment")
        super().__setitem__(name, value)


class _CodeGenerator(CodeGenerator):
    """Routes output, concatenation and container literals through the checkpoints."""

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.charge_output({super()._output_const_repr(group)})"

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write("environment.charge_output(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        super()._output_child_post(node, frame, finalize)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.checked_value(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.checked_value(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx == "store":  # an assignment target, not a value
            super().visit_Tuple(node, frame)
            return
        self.write("environment.checked_value(")
        super().visit_Tuple(node, frame)
        self.write(")")


class PromptSandbox(ImmutableSandboxedEnvironment):
    """The one Jinja environment of the Prompt Service; see the module docstring.

    Included templates are looked up in the render's budget (``refs``: reference string →
    compiled template), filled by the caller from Postgres before the render starts.
    """

    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = _CodeGenerator

    def __init__(self, limits: Limits | None = None) -> None:
        super().__init__(
            undefined=_StrictUndefined,
            autoescape=False,
            cache_size=0,  # templates are cached by (tenant, id, version) outside Jinja
            auto_reload=False,
            optimized=False,  # no folding: it would run filters at compile time
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.limits = limits or Limits()
        # Replace, not extend: lipsum (unbounded work) is gone, range is bounded.
        self.globals = {
            "range": self._range,
            "dict": dict,
            "namespace": _Namespace,
            "cycler": Cycler,
            "joiner": Joiner,
        }
        self.filters = {
            name: self._guard_filter(name, fn)
            for name, fn in DEFAULT_FILTERS.items()
            if name not in _DROPPED_FILTERS
        }
        self.filters.update(
            join=self._guard_filter("join", _join),
            replace=self._guard_filter("replace", _replace_filter),
            indent=self._guard_filter("indent", _indent),
            format=self._guard_filter("format", _format),
            wordwrap=self._guard_filter("wordwrap", _wordwrap),
        )

    # -- compilation ---------------------------------------------------------------

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        # Every for-loop iterates through the counting iterator.
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(
                nodes.EnvironmentAttribute("bounded_iter"), [loop.iter], [], None, None
            )
        return tree

    def _load_template(self, name: str, globals: Any) -> Any:
        template = current_budget().refs.get(name)
        if template is None:
            raise TemplateNotFound(name)
        return template

    # -- checkpoints called by compiled templates ----------------------------------

    def charge_output(self, text: str) -> str:
        budget = current_budget()
        budget.output_left -= len(text)
        if budget.output_left < 0:
            raise RenderLimitExceeded(
                f"render exceeded the output limit of {budget.limits.max_output_chars} characters"
            )
        budget.tick()
        return text

    def bounded_iter(self, iterable: Any) -> Iterator[Any]:
        budget = current_budget()
        for item in iterable:
            budget.iterations_left -= 1
            if budget.iterations_left < 0:
                raise RenderLimitExceeded(
                    f"render exceeded {budget.limits.max_iterations} loop iterations"
                )
            budget.tick()
            yield item

    def checked_value(self, value: Any) -> Any:
        current_budget().tick()
        return _check_weight(value, "building this value")

    def checked_concat(self, parts: tuple[Any, ...]) -> str:
        budget = current_budget()
        budget.tick()
        limit = budget.limits.max_output_chars
        total = 0
        for part in parts:
            if not isinstance(part, str):
                total += weigh(part, limit)
            else:
                total += len(part)
            if total > limit:
                raise RenderLimitExceeded(
                    f"concatenation would exceed the output limit of {limit} characters"
                )
        return "".join(str(p) for p in parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = current_budget()
        budget.tick()
        limit = budget.limits.max_output_chars
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, _SEQUENCES) and isinstance(n, int):
                    if len(seq) * max(n, 0) > limit:
                        raise RenderLimitExceeded(
                            f"repetition would exceed the output limit of {limit} characters"
                        )
            if _both_ints(left, right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise RenderLimitExceeded(f"integers larger than {MAX_INT_BITS} bits")
        elif operator == "**":
            if isinstance(right, int) and isinstance(left, int) and not isinstance(left, bool):
                if abs(left) > 1 and right * max(left.bit_length(), 1) > MAX_INT_BITS:
                    raise RenderLimitExceeded(f"integers larger than {MAX_INT_BITS} bits")
        elif operator == "+":
            if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
                if len(left) + len(right) > limit:
                    raise RenderLimitExceeded(
                        f"concatenation would exceed the output limit of {limit} characters"
                    )
        elif operator == "%" and isinstance(left, str | bytes):
            _check_printf(left if isinstance(left, str) else left.decode("latin-1"), right)
        result = self.binop_table[operator](left, right)
        if isinstance(result, list | tuple):
            _check_weight(result, "this operation")
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        current_budget().tick()
        if isinstance(__obj, LoopContext) and len(args) == 1:  # a recursive loop(...)
            args = (__self.bounded_iter(args[0]),)
        elif isinstance(__obj, _BUILTIN_CALLABLES):
            # Methods of str, int, list…: their integer arguments are sizes
            # ((5).to_bytes(10**9), 'x'.split(None, n)); macros' and globals' are values.
            _check_int_args(args, kwargs, getattr(__obj, "__qualname__", "call"))
            owner = getattr(__obj, "__self__", None)
            if isinstance(owner, str):
                name = getattr(__obj, "__name__", "")
                if name == "replace":
                    _precheck_replace(owner, *args, **kwargs)
                elif name == "join" and args:
                    args = (_materialize_join(args[0], owner),)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str | list | tuple | dict):
            _check_weight(result, "the result of a call")
        return result

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str | bytes) and attr in _BLOCKED_STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> None:
        # str.format/format_map are refused by is_safe_attribute instead of sandboxed.
        return None

    def _range(self, *args: int) -> range:
        rng = range(*args)
        if len(rng) > self.limits.max_range:
            raise RenderLimitExceeded(f"range() of more than {self.limits.max_range} items")
        return rng

    def _guard_filter(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        sizes = name in _SIZE_FILTERS
        # Arguments before the filtered value: the context/environment Jinja passes.
        value_at = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0

        @wraps(fn)  # keeps jinja_pass_arg, so Jinja still passes context/environment
        def guarded(*args: Any, **kwargs: Any) -> Any:
            current_budget().tick()
            if sizes:
                _check_int_args(args[value_at + 1 :], kwargs, f"filter {name}")
            result = fn(*args, **kwargs)
            if isinstance(result, str | list | tuple | dict):
                _check_weight(result, f"filter {name}")
            return result

        return guarded


def _both_ints(a: Any, b: Any) -> bool:
    return (
        isinstance(a, int)
        and isinstance(b, int)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    )


def _precheck_replace(s: str, old: Any = "", new: Any = "", count: int = -1) -> None:
    if not isinstance(old, str) or not isinstance(new, str):
        return
    hits = s.count(old) if old else len(s) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    size = len(s) + hits * (len(new) - len(old))
    limit = current_budget().limits.max_output_chars
    if size > limit:
        raise RenderLimitExceeded(f"replace would exceed the output limit of {limit} characters")


def _materialize_join(items: Any, sep: str) -> list[str]:
    """Turn items into strings one by one, stopping as soon as the join would be too big."""
    budget = current_budget()
    limit = budget.limits.max_output_chars
    out: list[str] = []
    total = 0
    for item in items:
        budget.tick()
        if not isinstance(item, str):
            if weigh(item, limit) > limit:
                raise RenderLimitExceeded(
                    f"join would exceed the output limit of {limit} characters"
                )
            item = str(item)
        total += len(item) + len(sep)
        if total > limit:
            raise RenderLimitExceeded(f"join would exceed the output limit of {limit} characters")
        out.append(item)
    return out


@pass_environment
def _join(environment: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    if attribute is not None:
        value = map(make_attrgetter(environment, attribute), value)  # sandboxed getattr
    return str(d).join(_materialize_join(value, str(d)))


def _replace_filter(s: Any, old: str, new: str, count: int | None = None) -> str:
    s = str(s)
    _precheck_replace(s, old, new, -1 if count is None else count)
    return s.replace(old, new, -1 if count is None else count)


def _indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    s = str(s)
    pad = width if isinstance(width, str) else " " * max(int(width), 0)
    limit = current_budget().limits.max_output_chars
    if len(s) + (s.count("\n") + 1) * len(pad) > limit:
        raise RenderLimitExceeded(f"indent would exceed the output limit of {limit} characters")
    return do_indent(s, pad, first, blank)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_printf(str(value), kwargs if kwargs else args)
    return do_format(str(value), *args, **kwargs)


@pass_environment
def _wordwrap(
    environment: Any,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    if wrapstring is not None and len(wrapstring) > 8:
        raise RenderLimitExceeded("wordwrap: wrapstring longer than 8 characters")
    if width < 1:
        raise RenderLimitExceeded("wordwrap: width must be positive")
    s = str(s)
    if len(s) > MAX_WORDWRAP_CHARS:
        raise RenderLimitExceeded(f"wordwrap of more than {MAX_WORDWRAP_CHARS} characters")
    return do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)
