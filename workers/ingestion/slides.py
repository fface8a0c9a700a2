"""PPTX decks through python-pptx: one unit per slide (its title, text frames, table
cells, grouped shapes), located by slide number, and one per slide's speaker notes,
located as that slide's notes. Pictures on slides are not read (no OCR of slides).

Limits: the zip-bomb checks of every OOXML package (``archive``), at most ``max_slides``
slides, shapes nested at most ``MAX_GROUP_DEPTH`` groups deep.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

from schemas.locations import NOTES, Location
from workers.ingestion.archive import ZipLimits, check_zip, open_zip
from workers.ingestion.errors import ParseError

DEFAULT_MAX_SLIDES = 2_000
MAX_GROUP_DEPTH = 8


def read_pptx(
    data: bytes, zip_limits: ZipLimits, *, max_slides: int = DEFAULT_MAX_SLIDES
) -> tuple[list[tuple[str, Location]], str | None]:
    """Units (one per slide, one per slide's notes) and the deck's title."""
    with open_zip(data, "PPTX") as zf:
        check_zip(zf, zip_limits, "PPTX")
    import pptx
    from pptx.exc import PackageNotFoundError

    try:
        deck = pptx.Presentation(io.BytesIO(data))
        slides = list(deck.slides)
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError):
        raise ParseError("the PPTX deck is corrupt") from None
    except Exception as exc:  # lxml errors from a broken part
        raise ParseError(f"the PPTX deck is corrupt ({type(exc).__name__})") from None
    if len(slides) > max_slides:
        raise ParseError(f"the deck has {len(slides)} slides, over the {max_slides}-slide limit")
    units: list[tuple[str, Location]] = []
    try:
        for number, slide in enumerate(slides, start=1):
            lines: list[str] = []
            title_shape = slide.shapes.title
            title = title_shape.text_frame.text.strip() if title_shape is not None else ""
            if title:
                lines.append(title)
            for shape in slide.shapes:
                if title_shape is not None and shape.shape_id == title_shape.shape_id:
                    continue
                _shape_text(shape, lines, 0)
            text = "\n".join(ln for ln in lines if ln.strip())
            if text.strip():
                units.append((text, Location(slide=number)))
            if slide.has_notes_slide:
                notes_frame = slide.notes_slide.notes_text_frame
                notes = notes_frame.text.strip() if notes_frame is not None else ""
                if notes:
                    units.append((notes, Location(slide=number, region=NOTES)))
        title = deck.core_properties.title or None
    except ParseError:
        raise
    except Exception as exc:
        raise ParseError(f"the PPTX deck is corrupt ({type(exc).__name__})") from None
    return units, title


def _shape_text(shape: Any, lines: list[str], depth: int) -> None:
    if depth > MAX_GROUP_DEPTH:
        return
    if getattr(shape, "has_text_frame", False) and shape.has_text_frame:
        for paragraph in shape.text_frame.paragraphs:
            text = "".join(run.text for run in paragraph.runs).strip()
            if text:
                lines.append(text)
    if getattr(shape, "has_table", False) and shape.has_table:
        for row in shape.table.rows:
            cells = [cell.text.strip() for cell in row.cells]
            if any(cells):
                lines.append(" | ".join(cells))
    if getattr(shape, "shape_type", None) is not None and hasattr(shape, "shapes"):
        for child in shape.shapes:
            _shape_text(child, lines, depth + 1)
