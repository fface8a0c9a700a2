"""Imports run one way: no first-party module imports another that (indirectly) imports
it back, every module imports on its own, and importing changes no process state."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bus", "schemas", "gateway_bridge", "mesh", "workers")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the first-party modules it imports anywhere in its body (including
    imports inside functions and ``if TYPE_CHECKING:`` blocks: a circle hidden by a late
    import is still a circle). Importing a submodule is not counted as importing the
    package it lives in."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                names = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            targets.update(t for name in names if (t := owner(name)) is not None)
        graph[module] = {t for t in targets if t != module and not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_bridge_modules_are_in_the_graph() -> None:
    graph = import_graph()
    assert {"gateway_bridge.admission", "gateway_bridge.sse"} <= graph["gateway_bridge.app"]
    assert "gateway_bridge.admission" in graph["gateway_bridge.openai_routes"]
    assert "gateway_bridge.admission" in graph["gateway_bridge.upload"]


def test_no_first_party_import_circles() -> None:
    assert cycles(import_graph()) == []


_IMPORT_EACH = """
import importlib, json, sys
names = json.loads(sys.argv[1])
first_party = tuple(json.loads(sys.argv[2]))
failed = {}
for name in names:
    for loaded in [m for m in sys.modules if m.split(".")[0] in first_party]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
print(json.dumps(failed))
"""


@pytest.mark.timeout(600)  # one interpreter, but a loaded 2-core machine is slow to import
def test_each_bridge_and_runtime_module_imports_on_its_own() -> None:
    """Each module of the bridge and the runtime, imported first (no other first-party
    module loaded), imports cleanly: an order that only works once another module has
    loaded is a hidden circle. (The whole graph is checked for circles statically.)"""
    names = sorted(m for m in import_graph() if m.split(".")[0] in ("gateway_bridge", "bus"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    from workers.gateway.settings import OFFLINE_ENV

    env.update(OFFLINE_ENV)
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, json.dumps(names), json.dumps(PACKAGES)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_importing_the_gateway_package_leaves_the_environment_alone() -> None:
    code = (
        "import os, sys; before = dict(os.environ); import workers.gateway; "
        "sys.exit(0 if dict(os.environ) == before else 1)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "HF_HUB"))}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0
