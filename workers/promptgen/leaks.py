"""Secret-looking strings (API keys, tokens, passwords) in prompts and specs.

The input is untrusted (a user's prompt, a model's answer), so every scan here is linear
in its size by construction and runs inline: the text is split into tokens once (one
character-class regex), each token is matched only at its start and only over its first
``MAX_TOKEN`` characters, and the one pattern over the whole text (``key: value``) can
only start at a fixed keyword and has bounded quantifiers. Callers also cap the text
(prompts at 8,000 characters, model answers at ``PROMPTGEN_MAX_ANSWER_CHARS``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

REDACTED = "[REDACTED]"
MAX_TOKEN = 512
_MIN_TOKEN = 12
_SPLIT = re.compile(r"[\s\"'`<>()\[\]{},;|]+")
#: Anchored at a token's start (``re.match``); no pattern backtracks more than a token.
_TOKEN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an OpenAI-style API key", re.compile(r"sk-(?:proj-|live-|test-|ant-)?[A-Za-z0-9_-]{16,}")),
    ("an AWS access key id", re.compile(r"(?:AKIA|ASIA)[0-9A-Z]{16}")),
    ("a GitHub token", re.compile(r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")),
    ("a Slack token", re.compile(r"xox[abposr]-[A-Za-z0-9-]{10,}")),
    ("a Google API key", re.compile(r"AIza[0-9A-Za-z_-]{35}")),
    ("a Stripe key", re.compile(r"[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}")),
    (
        "a JSON Web Token",
        re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    ),
)
#: ``password: hunter22``, ``api_key=abc123...``: starts only at a keyword.
_ASSIGNMENT = re.compile(
    r"(?i)\b(api[_-]?key|apikey|access[_-]?token|auth[_-]?token|secret[_-]?key|client[_-]?secret"
    r"|private[_-]?key|password|passwd|pwd|token|bearer)\b[\"']?\s{0,3}[:=]?\s{0,3}[\"']?"
    r"([^\s\"',;]{6,128})"
)
_PLACEHOLDER = re.compile(r"(?i)^(?:\{\{|\$\{|<|%|\[|\*+$|x+$|your|example|redacted|none|null)")


@dataclass(frozen=True)
class Leak:
    what: str
    text: str

    def describe(self) -> str:
        shown = self.text[:4] + "…" if len(self.text) > 4 else "…"
        return f"{self.what} ({shown})"


def _looks_secret(value: str) -> bool:
    """A value after ``password:`` etc.: not a placeholder, and not a plain word."""
    if _PLACEHOLDER.match(value):
        return False
    has_digit = any(c.isdigit() for c in value)
    mixed = any(c.isupper() for c in value) and any(c.islower() for c in value)
    return has_digit or (mixed and len(value) >= 16)


def find(text: str) -> list[Leak]:
    """Every secret-looking string in ``text`` (linear in its length)."""
    found: list[Leak] = []
    if (at := text.find("PRIVATE KEY-----")) >= 0:
        start = max(text.rfind("-----BEGIN", 0, at), 0)
        end = text.find("PRIVATE KEY-----", text.find("-----END", at) + 1)
        stop = end + len("PRIVATE KEY-----") if end >= 0 else at + len("PRIVATE KEY-----")
        found.append(Leak("a private key", text[start:stop]))
    for token in _SPLIT.split(text):
        if len(token) < _MIN_TOKEN:
            continue
        head = token[:MAX_TOKEN]
        for what, pattern in _TOKEN_PATTERNS:
            m = pattern.match(head)
            if m:
                found.append(Leak(what, m.group(0)))
                break
        else:
            if "://" in head and "@" in head:
                try:
                    parts = urlsplit(head[head.find("://") - 10 if head.find("://") > 10 else 0 :])
                    if parts.password:
                        found.append(Leak("a URL with a password", parts.password))
                except ValueError:
                    pass
    for m in _ASSIGNMENT.finditer(text):
        if _looks_secret(m.group(2)):
            found.append(Leak(f"a {m.group(1).lower()} value", m.group(2)))
    return found


def strings_of(value: Any, limit: int = 10_000) -> Iterable[str]:
    """Every string (keys too) inside a JSON value, depth first, at most ``limit``."""
    stack = [value]
    seen = 0
    while stack and seen < limit:
        item = stack.pop()
        seen += 1
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for k, v in item.items():
                yield str(k)
                stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)


def find_in(value: Any) -> list[Leak]:
    return find("\n".join(strings_of(value)))


def redact(value: Any, leaks: list[Leak]) -> Any:
    """``value`` with every leaked string replaced by ``[REDACTED]``."""
    secrets = sorted({leak.text for leak in leaks if leak.text}, key=len, reverse=True)
    if not secrets:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            for s in secrets:
                item = item.replace(s, REDACTED)
            return item
        if isinstance(item, dict):
            return {k: walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    return walk(value)
