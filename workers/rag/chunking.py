"""Structure-aware chunking: sections (Markdown headings) first, then paragraphs, lines,
sentences, and only then fixed token windows, packed up to a token budget with overlap.

Token counts are approximate and local: one token per word (``\\w+``) and one per other
non-space character. WordPiece/BPE tokenizers cut English into about 1.1–1.4 tokens per
word, so the default 200-token budget stays inside MiniLM's 256-token input window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.locations import Location

DEFAULT_MAX_TOKENS = 200
DEFAULT_OVERLAP = 30
#: Characters per token a chunk may average at most: a chunk of 200 "tokens" must not
#: carry megabytes (one 5 MB word, or two words around 5 MB of spaces) into embedding
#: requests and the index. Longer chunks are cut into pieces of this many characters per
#: token of the budget.
MAX_CHARS_PER_TOKEN = 40

_TOKEN = re.compile(r"\w+|[^\w\s]")
# Runs of blanks longer than this become one space (layout, not content).
_LONG_BLANK = re.compile(r"[ \t]{32,}")
# An ATX heading opens with 1-6 '#' and whitespace; the rest is cut by _heading() in
# linear time (a single pattern such as `^(#{1,6})\s+(.+?)\s*#*\s*$` backtracks
# cubically on "# a" + " " * n + "b").
_HEADING_OPEN = re.compile(r"(#{1,6})\s")
_FENCE = re.compile(r"^\s*(```|~~~)")
# A sentence ends at . ! ? (or their CJK forms) followed by space and a capital/digit/quote.
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+(?=[\"'(\[]?[A-Z0-9\u00C0-\u024F\u4e00-\u9fff])")


def _heading(line: str) -> tuple[int, str] | None:
    """``(level, title)`` of a Markdown ATX heading line, or None; a closing run of '#'
    is dropped when whitespace precedes it (CommonMark: ``# C#`` keeps its '#')."""
    m = _HEADING_OPEN.match(line)
    if m is None:
        return None
    title = line[m.end() :].strip()
    bare = title.rstrip("#")
    if bare != title and (not bare or bare[-1].isspace()):
        title = bare.rstrip()
    if not title:
        return None
    return len(m.group(1)), title


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


@dataclass(frozen=True)
class Piece:
    text: str
    section: str | None
    tokens: int
    location: Location | None = None


@dataclass(frozen=True)
class _Unit:
    text: str
    tokens: int
    joiner: str  # how this unit attaches to the one before it in the same chunk


def sections(text: str) -> list[tuple[str | None, list[str]]]:
    """Split into ``(heading path, paragraphs)``; fenced code blocks stay whole."""
    out: list[tuple[str | None, list[str]]] = []
    path: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    current: list[str] = []
    fenced = False

    def close_paragraph() -> None:
        if current:
            para = "\n".join(current).strip("\n")
            if para.strip():
                paragraphs.append(para)
            current.clear()

    def close_section() -> None:
        close_paragraph()
        if paragraphs:
            out.append((" > ".join(t for _, t in path) or None, paragraphs.copy()))
            paragraphs.clear()

    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            current.append(line)
            continue
        if not fenced:
            heading = _heading(line)
            if heading:
                close_section()
                level, title = heading
                while path and path[-1][0] >= level:
                    path.pop()
                path.append((level, title))
                continue
            if not line.strip():
                close_paragraph()
                continue
        current.append(line.rstrip())
    close_section()
    return out


def _split(text: str, max_tokens: int, overlap: int) -> list[_Unit]:
    """Break one paragraph into units no larger than ``max_tokens``: lines, then
    sentences, then token windows."""
    n = count_tokens(text)
    if n <= max_tokens:
        return [_Unit(text, n, "\n\n")]
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if len(lines) > 1:
        parts, joiner = lines, "\n"
    else:
        parts, joiner = [s for s in _SENTENCE_END.split(text) if s.strip()], " "
        if len(parts) <= 1:
            return _windows(text, max_tokens, overlap)
    units: list[_Unit] = []
    for i, part in enumerate(parts):
        sub = _split(part, max_tokens, overlap)
        units.append(_Unit(sub[0].text, sub[0].tokens, "\n\n" if i == 0 else joiner))
        units.extend(sub[1:])
    return units


def _windows(text: str, max_tokens: int, overlap: int) -> list[_Unit]:
    """Fixed windows of tokens over one long sentence, cut at token boundaries.

    Windows after the first overlap their predecessor already: they are marked (joiner
    ``\0``) so packing adds no second overlap.
    """
    spans = [m.span() for m in _TOKEN.finditer(text)]
    step = max(1, max_tokens - overlap)
    units: list[_Unit] = []
    for start in range(0, len(spans), step):
        window = spans[start : start + max_tokens]
        units.append(
            _Unit(text[window[0][0] : window[-1][1]], len(window), " " if not units else "\0")
        )
        if start + max_tokens >= len(spans):
            break
    return units


def _pack(units: list[_Unit], max_tokens: int, overlap: int) -> list[tuple[str, int]]:
    chunks: list[tuple[str, int]] = []
    current: list[_Unit] = []
    size = 0

    def text_of(us: list[_Unit]) -> str:
        parts = [us[0].text]
        for u in us[1:]:
            parts.append((" " if u.joiner == "\0" else u.joiner) + u.text)
        return "".join(parts).strip()

    for unit in units:
        if current and size + unit.tokens > max_tokens:
            chunks.append((text_of(current), size))
            # Carry the tail of the closed chunk (whole units, at most `overlap` tokens).
            carry: list[_Unit] = []
            carried = 0
            if unit.joiner != "\0":
                for prev in reversed(current):
                    if carried + prev.tokens > overlap or prev.joiner == "\0":
                        break
                    carry.insert(0, prev)
                    carried += prev.tokens
            if carried + unit.tokens > max_tokens:
                carry, carried = [], 0
            current, size = carry, carried
        current.append(unit)
        size += unit.tokens
    if current:
        chunks.append((text_of(current), size))
    return chunks


def chunk_text(
    text: str, *, max_tokens: int = DEFAULT_MAX_TOKENS, overlap: int = DEFAULT_OVERLAP
) -> list[Piece]:
    """Chunks that never cross a section boundary, each at most ``max_tokens``."""
    if max_tokens < 8 or not 0 <= overlap < max_tokens:
        raise ValueError("need max_tokens >= 8 and 0 <= overlap < max_tokens")
    pieces: list[Piece] = []
    cap = max_tokens * MAX_CHARS_PER_TOKEN
    for section, paragraphs in sections(_LONG_BLANK.sub(" ", text)):
        units = [u for p in paragraphs for u in _split(p, max_tokens, overlap)]
        for chunk, tokens in _pack(units, max_tokens, overlap):
            if len(chunk) > cap:  # very long "words": cut by characters
                for start in range(0, len(chunk), cap):
                    part = chunk[start : start + cap].strip()
                    if part:
                        pieces.append(Piece(part, section, count_tokens(part)))
            elif chunk:
                pieces.append(Piece(chunk, section, tokens))
    return pieces
