"""Where a passage sits in its source file: a PDF page, a spreadsheet's sheet and rows, a
slide, a stretch of a recording, text read off an image.

Ingestion records one :class:`Span` per unit of the parsed text (a page, a row, a slide,
a transcript segment); RAG gives each chunk the :class:`Location` of the units it covers
(a range when it covers several) and returns it in search results and ``rag.query``
citations. Every field is optional: a text file has no location at all.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, computed_field

#: What ``region`` says of text recognised in an image (OCR).
IMAGE_TEXT = "image text"
#: What ``region`` says of a slide's speaker notes.
NOTES = "notes"


class Location(BaseModel):
    """A place in a file; ranges are inclusive (``page=3, page_end=4``: pages 3 to 4)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    page: int | None = Field(default=None, ge=1, description="PDF page, from 1")
    page_end: int | None = Field(default=None, ge=1)
    sheet: str | None = Field(default=None, max_length=256, description="spreadsheet sheet")
    row: int | None = Field(default=None, ge=1, description="row number as the sheet shows it")
    row_end: int | None = Field(default=None, ge=1)
    slide: int | None = Field(default=None, ge=1, description="slide number, from 1")
    slide_end: int | None = Field(default=None, ge=1)
    start_seconds: float | None = Field(default=None, ge=0, description="audio: start")
    end_seconds: float | None = Field(default=None, ge=0, description="audio: end")
    region: str | None = Field(
        default=None, max_length=64, description=f"{IMAGE_TEXT!r} (OCR) or {NOTES!r}"
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def label(self) -> str:
        """The location as a person would cite it: "page 3", "Sales rows 2-9", "00:01:05"."""
        parts: list[str] = []
        if self.page is not None:
            parts.append(_range("page", "pages", self.page, self.page_end))
        if self.sheet is not None or self.row is not None:
            rows = _range("row", "rows", self.row, self.row_end) if self.row else ""
            parts.append(
                " ".join(p for p in (f"sheet {self.sheet!r}" if self.sheet else "", rows) if p)
            )
        if self.slide is not None:
            parts.append(_range("slide", "slides", self.slide, self.slide_end))
        if self.start_seconds is not None:
            end = self.end_seconds
            span = _clock(self.start_seconds)
            parts.append(
                span if end is None or end <= self.start_seconds else f"{span}-{_clock(end)}"
            )
        if self.region:
            parts.append(self.region)
        return ", ".join(parts)

    def merge(self, later: Location) -> Location:
        """One location covering this one and a ``later`` one of the same file."""
        return Location(
            page=self.page,
            page_end=_end(self.page, self.page_end, later.page, later.page_end),
            sheet=self.sheet if self.sheet == later.sheet else None,
            row=self.row if self.sheet == later.sheet else None,
            row_end=_end(self.row, self.row_end, later.row, later.row_end)
            if self.sheet == later.sheet
            else None,
            slide=self.slide,
            slide_end=_end(self.slide, self.slide_end, later.slide, later.slide_end),
            start_seconds=self.start_seconds,
            end_seconds=later.end_seconds if later.end_seconds is not None else self.end_seconds,
            region=self.region if self.region == later.region else None,
        )


class Span(BaseModel):
    """``text[start:end]`` of a parsed document comes from ``location``."""

    model_config = ConfigDict(extra="forbid")

    start: int = Field(ge=0)
    end: int = Field(ge=0)
    location: Location


def _range(one: str, many: str, first: int | None, last: int | None) -> str:
    if last is None or first is None or last <= first:
        return f"{one} {first}"
    return f"{many} {first}-{last}"


def _end(
    first: int | None, first_end: int | None, second: int | None, second_end: int | None
) -> int | None:
    if first is None:
        return None
    last = max(x for x in (first, first_end, second, second_end) if x is not None)
    return last if last > first else None


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
