"""Resolving a version's include/import references before it renders, and refusing cycles.

A reference is ``"name"`` (label ``production``), ``"name:label"`` or ``"name:3"`` (a
version). References are resolved against the caller's tenant only, once per render, so
the whole tree renders from one set of versions; the sandbox's loader serves them from
the resolved map and never touches the database.
"""

from __future__ import annotations

import re

from bus.errors import InvalidRequest
from schemas.prompt import DEFAULT_LABEL
from workers.prompt.store import PromptStore, VersionRow

#: Most distinct references one render may resolve (the whole tree).
MAX_INCLUDES = 32

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LABEL = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """``(name, label, version)`` of a reference; exactly one of label/version is set."""
    name, _, selector = ref.partition(":")
    if not _NAME.match(name):
        raise InvalidRequest(f"include {ref!r}: not a template name", {"include": ref})
    if not selector:
        return name, DEFAULT_LABEL, None
    if selector.isdigit():
        return name, None, int(selector)
    if not _LABEL.match(selector):
        raise InvalidRequest(f"include {ref!r}: not a label or version", {"include": ref})
    return name, selector, None


def check_refs(refs: list[str]) -> None:
    """Validate reference syntax at save time."""
    for ref in refs:
        parse_ref(ref)


async def resolve(store: PromptStore, tenant: str, root: VersionRow) -> dict[str, VersionRow]:
    """Every reference reachable from ``root`` → its version. References that do not
    resolve are left out (the render reports them, unless ``ignore missing``)."""
    resolved: dict[str, VersionRow] = {}
    missing: set[str] = set()
    queue = list(root.refs)
    while queue:
        ref = queue.pop(0)
        if ref in resolved or ref in missing:
            continue
        if len(resolved) >= MAX_INCLUDES:
            raise InvalidRequest(f"a template tree may include at most {MAX_INCLUDES} templates")
        name, label, version = parse_ref(ref)
        row = await store.find(tenant, name, label=label, version=version)
        if row is None:
            missing.add(ref)
            continue
        if row.type != "text":
            raise InvalidRequest(
                f"include {ref!r} is a chat template; only text templates can be included",
                {"include": ref},
            )
        resolved[ref] = row
        queue.extend(row.refs)
    _refuse_cycles(root, resolved)
    return resolved


def _refuse_cycles(root: VersionRow, resolved: dict[str, VersionRow]) -> None:
    """Depth-first search over (template, version) nodes; a back edge is a cycle."""

    def node(row: VersionRow) -> tuple[str, int]:
        return (row.template_id, row.version)

    on_path: list[VersionRow] = []
    done: set[tuple[str, int]] = set()

    def visit(row: VersionRow) -> None:
        on_path.append(row)
        for ref in row.refs:
            target = resolved.get(ref)
            if target is None or node(target) in done:
                continue
            if any(node(target) == node(r) for r in on_path):
                start = next(i for i, r in enumerate(on_path) if node(r) == node(target))
                chain = [f"{r.name}@{r.version}" for r in on_path[start:]]
                chain.append(f"{target.name}@{target.version}")
                raise InvalidRequest(f"include cycle: {' -> '.join(chain)}", {"cycle": chain})
            visit(target)
        on_path.pop()
        done.add(node(row))

    visit(root)
