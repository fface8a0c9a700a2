"""Generate ``mesh/client/_services.py``: one typed class per service, one method per
operation, from the declarations (``schemas/<service>.py`` ``OPERATIONS``).

    python -m mesh.client.codegen          # rewrite the module
    python -m mesh.client.codegen --check  # exit 1 if it is out of date

A service is included when ``schemas/<name>.py`` declares ``OPERATIONS`` and ``name`` is
a service of the mesh (``schemas.operations.SERVICES``) or a registered worker
(``mesh.registry.WORKERS``). Each method has two overloads: a request model, or the
request's fields as keyword arguments (typed from the model's fields, required ones
required); it returns the operation's response model, or for a streaming operation an
async generator of its chunk model. ``tests/mesh/test_client.py`` fails when the committed
module differs from what this generates, so a new or changed operation is one command
away from the typed client.
"""

from __future__ import annotations

import importlib
import keyword
import subprocess
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from mesh.client._base import Service
from schemas.operations import SERVICES, Operation

TARGET = Path(__file__).with_name("_services.py")

_BUILTINS = (str, int, float, bool, bytes, type(None))
_CONTAINERS = {list: "list", dict: "dict", tuple: "tuple", set: "set", frozenset: "frozenset"}
_READ_ONLY = {list: "collections.abc.Sequence", dict: "collections.abc.Mapping"}


def service_names() -> list[str]:
    from mesh.registry import WORKERS

    names = []
    for name in sorted(set(SERVICES) | set(WORKERS)):
        try:
            module = importlib.import_module(f"schemas.{name}")
        except ModuleNotFoundError:
            continue
        if getattr(module, "OPERATIONS", None):
            names.append(name)
    return names


class _Renderer:
    """Python source for a runtime type, every name module-qualified (a method named
    ``list`` or ``set`` in the class body would otherwise shadow the builtin)."""

    def __init__(self) -> None:
        self.modules: set[str] = {"builtins", "typing"}

    def argument(self, tp: Any) -> str:
        """As :meth:`__call__`, but a model may also be given as a plain mapping (pydantic
        validates it): ``messages=[{"role": "user", "content": "Hi"}]`` type-checks."""
        return self(tp, loose=True)

    def __call__(self, tp: Any, loose: bool = False) -> str:
        origin, args = get_origin(tp), get_args(tp)
        if tp is type(None):
            return "None"
        if tp is Any:
            return "typing.Any"
        if origin is typing.Annotated:
            return self(args[0], loose)
        if origin is Literal:
            return "typing.Literal[" + ", ".join(repr(a) for a in args) + "]"
        if origin is Union or origin is types.UnionType:
            return " | ".join(dict.fromkeys(self(a, loose) for a in args))
        if origin in _CONTAINERS:
            inner = ", ".join("..." if a is Ellipsis else self(a, loose) for a in args)
            name = f"builtins.{_CONTAINERS[origin]}"
            if loose and origin in _READ_ONLY:
                # Arguments: pydantic takes any sequence/mapping, and the read-only ABCs are
                # covariant, so a list[dict[str, str]] variable passes as list[Model | Mapping].
                name = _READ_ONLY[origin]
            return f"{name}[{inner}]" if inner else name
        if tp in _CONTAINERS:
            return f"builtins.{_CONTAINERS[tp]}"
        if tp in _BUILTINS:
            return f"builtins.{tp.__name__}"
        if isinstance(tp, type) and "<locals>" not in tp.__qualname__:
            # A model, an enum, datetime, Decimal, UUID, ...: by its module-qualified name.
            self.modules.add(tp.__module__)
            name = f"{tp.__module__}.{tp.__qualname__}"
            if loose and issubclass(tp, BaseModel):
                return f"{name} | collections.abc.Mapping[builtins.str, typing.Any]"
            return name
        # Anything else (a type alias object, a callable validator type, ...): untyped
        # here, still validated by pydantic at run time.
        return "typing.Any"


def _class_name(service: str) -> str:
    return "".join(part.capitalize() for part in service.split("_")) + "Service"


def _constant(module: types.ModuleType, op: Operation[Any, Any]) -> str:
    for name, value in vars(module).items():
        if value is op and name.isupper():
            return f"{module.__name__}.{name}"
    raise LookupError(f"{op.subject} is not a module constant of {module.__name__}")


def _method(module: types.ModuleType, op: Operation[Any, Any], render: _Renderer) -> str:
    if keyword.iskeyword(op.name) or hasattr(Service, op.name):
        raise ValueError(f"operation name {op.name!r} cannot be a client method name")
    req = render(op.request)
    resp = render(op.response)
    ret = f"collections.abc.AsyncGenerator[{resp}, None]" if op.streaming else resp
    kwargs = []
    for name, field in op.request.model_fields.items():
        if (
            field.alias
            and field.alias != name
            and not op.request.model_config.get("populate_by_name")
        ):
            # The keyword is the Python name (``from_`` for the wire's ``from``): the model
            # must accept it, which ``populate_by_name`` says.
            raise ValueError(f"{op.subject}: field {name!r} has an alias; not supported yet")
        if keyword.iskeyword(name) or name in ("self", "request"):
            raise ValueError(f"{op.subject}: field name {name!r} cannot be a keyword argument")
        default = "" if field.is_required() else " = ..."
        kwargs.append(f"{name}: {render.argument(field.annotation)}{default}")
    fields = ", ".join(["self", "/", "*", *kwargs]) if kwargs else "self, /"
    retry = "idempotent: retried on unavailable/timeout" if op.idempotent else "not retried"
    kind = "streams its chunks" if op.streaming else retry
    summary = op.description.rstrip(".") or op.name
    summary = textwrap.indent(textwrap.fill(summary[:1].upper() + summary[1:] + ".", 88), " " * 8)
    doc = f"{summary.lstrip()}\n\n        ``{op.subject}``; {kind}.\n        "

    prefix = "def" if op.streaming else "async def"
    forward = "self._stream" if op.streaming else "await self._call"
    constant = _constant(module, op)
    return f'''
    @typing.overload
    {prefix} {op.name}(self, request: {req}, /) -> {ret}: ...
    @typing.overload
    {prefix} {op.name}({fields}) -> {ret}: ...
    {prefix} {op.name}(self, request: typing.Any = None, /, **fields: typing.Any) -> {ret}:
        """{doc}"""
        return {forward}({constant}, request, fields)
'''


def generate() -> str:
    render = _Renderer()
    render.modules.add("collections.abc")
    classes = []
    names = service_names()
    for service in names:
        module = importlib.import_module(f"schemas.{service}")
        ops: tuple[Operation[Any, Any], ...] = module.OPERATIONS
        render.modules.add(module.__name__)
        methods = "".join(_method(module, op, render) for op in ops)
        operations = ", ".join(f'"{op.name}": {_constant(module, op)}' for op in ops)
        classes.append(
            f'''

class {_class_name(service)}(Service):
    """The ``{service}`` service (``schemas/{service}.py``)."""

    name = "{service}"
    operations = {{{operations}}}
{methods}'''
        )
    stdlib = sorted(m for m in render.modules if m.split(".")[0] in sys.stdlib_module_names)
    local = sorted(render.modules - set(stdlib))
    imports = "\n".join(f"import {m}" for m in stdlib) + "\n\n"
    imports += "\n".join(f"import {m}" for m in local) + "\n"
    annotations = "\n".join(f"    {s}: {_class_name(s)}" for s in names)
    registry = ", ".join(f'"{s}": {_class_name(s)}' for s in names)
    source = f'''"""Typed service namespaces of :class:`mesh.client.Mesh`.

GENERATED by ``python -m mesh.client.codegen`` from the operation declarations
(``schemas/<service>.py`` ``OPERATIONS``): do not edit by hand.
"""

from __future__ import annotations

{imports}from mesh.client._base import Service
{"".join(classes)}

class Services:
    """The typed service attributes of :class:`mesh.client.Mesh`."""

{annotations}


SERVICE_CLASSES: dict[str, type[Service]] = {{{registry}}}
'''
    return _format(source)


def _format(source: str) -> str:
    try:
        out = subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(TARGET), "-"],
            input=source,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemExit(f"ruff could not format the generated client: {exc}") from None
    return out.stdout


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    source = generate()
    current = TARGET.read_text() if TARGET.exists() else ""
    if "--check" in args:
        if source != current:
            print(f"{TARGET} is out of date: run `python -m mesh.client.codegen`")
            return 1
        return 0
    if source != current:
        TARGET.write_text(source)
        print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
