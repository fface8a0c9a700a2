"""Chunking a document whose text comes with located spans (pages, sheet rows, slides,
transcript segments; ``schemas.locations``), so every chunk knows where it comes from.

Every page, slide, image and spreadsheet row is a chunk of its own, so a citation names
one page, one slide, one row (a row, ``header: value`` per line, reads on its own; the
sheet's name is its section, embedded and searched with it). Transcript segments, a
sentence or two each, are packed into chunks up to the token budget, and such a chunk's
location covers its first to its last segment ("00:00:12-00:00:31"). A unit larger than
the budget is cut by the ordinary chunker (``chunk_text``) and each piece keeps the
unit's location.
Text outside every span (there is none when ingestion built the spans) is chunked
without a location.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.locations import Location, Span
from workers.rag.chunking import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_OVERLAP,
    Piece,
    chunk_text,
    count_tokens,
)


def _packs(location: Location) -> bool:
    """Whether consecutive units of this kind share chunks (transcript segments do)."""
    return location.start_seconds is not None and location.row is None


def valid_spans(text: str, spans: Sequence[Span]) -> list[Span]:
    """The spans in order, inside the text and not overlapping (others are dropped)."""
    out: list[Span] = []
    end = 0
    for span in sorted(spans, key=lambda s: s.start):
        if span.start >= end and span.start < span.end <= len(text):
            out.append(span)
            end = span.end
    return out


def chunk_spans(
    text: str,
    spans: Sequence[Span],
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
) -> list[Piece]:
    pieces: list[Piece] = []
    pack: list[tuple[str, Location, int]] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if not pack:
            return
        location = pack[0][1]
        for _, later, _ in pack[1:]:
            location = location.merge(later)
        body = "\n\n".join(t for t, _, _ in pack)
        pieces.append(Piece(body, _section(location), size, location))
        pack.clear()
        size = 0

    cursor = 0
    for span in valid_spans(text, spans):
        gap = text[cursor : span.start].strip()
        if gap:
            flush()
            pieces.extend(chunk_text(gap, max_tokens=max_tokens, overlap=overlap))
        cursor = span.end
        unit = text[span.start : span.end].strip()
        if not unit:
            continue
        tokens = count_tokens(unit)
        if pack and (not _packs(span.location) or size + tokens > max_tokens):
            flush()
        if tokens > max_tokens:
            for p in chunk_text(unit, max_tokens=max_tokens, overlap=overlap):
                pieces.append(
                    Piece(p.text, p.section or _section(span.location), p.tokens, span.location)
                )
            continue
        pack.append((unit, span.location, tokens))
        size += tokens
        if not _packs(span.location):
            flush()
    flush()
    tail = text[cursor:].strip()
    if tail:
        pieces.extend(chunk_text(tail, max_tokens=max_tokens, overlap=overlap))
    return pieces


def _section(location: Location) -> str | None:
    """A sheet's name is context for its rows (embedded and searched with them)."""
    return location.sheet
