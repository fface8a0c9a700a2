"""Field-by-field difference between two spec versions (JSON pointers into the body)."""

from __future__ import annotations

from typing import Any

from schemas.promptgen import FieldChange

_MAX_DEPTH = 16


def _pointer(parts: list[str]) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[FieldChange]:
    """Objects are compared key by key, recursively; any other value (lists included) is
    one field: a changed list is reported whole, so a reviewer sees both lists."""
    out: list[FieldChange] = []

    def walk(a: Any, b: Any, path: list[str], depth: int) -> None:
        if isinstance(a, dict) and isinstance(b, dict) and depth < _MAX_DEPTH:
            for key in list(a) + [k for k in b if k not in a]:
                if key not in b:
                    out.append(
                        FieldChange(path=_pointer([*path, key]), op="removed", before=a[key])
                    )
                elif key not in a:
                    out.append(FieldChange(path=_pointer([*path, key]), op="added", after=b[key]))
                else:
                    walk(a[key], b[key], [*path, key], depth + 1)
        elif a != b:
            out.append(FieldChange(path=_pointer(path), op="changed", before=a, after=b))

    walk(before, after, [], 0)
    return out
