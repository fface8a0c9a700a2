"""Differences between two versions of a template."""

from __future__ import annotations

import difflib
from typing import Any

from schemas.prompt import ConfigChange
from workers.prompt.store import VersionRow


def _lines(row: VersionRow) -> list[str]:
    if row.type == "text":
        text = row.template or ""
    else:
        text = "".join(f"[{m['role']}]\n{m['content']}\n" for m in row.messages or [])
    return [line + "\n" for line in text.splitlines()]


def unified(a: VersionRow, b: VersionRow) -> str:
    return "".join(
        difflib.unified_diff(
            _lines(a), _lines(b), fromfile=f"{a.name}@{a.version}", tofile=f"{b.name}@{b.version}"
        )
    )


def config_changes(a: dict[str, Any], b: dict[str, Any]) -> list[ConfigChange]:
    changes = []
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            changes.append(ConfigChange(key=key, before=a[key], change="removed"))
        elif key not in a:
            changes.append(ConfigChange(key=key, after=b[key], change="added"))
        elif a[key] != b[key]:
            changes.append(ConfigChange(key=key, before=a[key], after=b[key], change="changed"))
    return changes
