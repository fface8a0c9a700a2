"""PDF, page by page: the text layer where a page has one, OCR of the page's images where
it has none (a scanned page); every page is a unit located by its page number.

Limits: ``max_pdf_pages`` pages in all, at most ``max_ocr_pages`` pages read by OCR (a
scanned page costs about a second), and every embedded image's width and height, read
from its dictionary before it is decoded, within the image limits.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from schemas.locations import IMAGE_TEXT, Location
from workers.ingestion.errors import ParseError
from workers.ingestion.images import ImageLimits, check_size

DEFAULT_MAX_OCR_PAGES = 100
#: Images smaller than this (per side) are decorations, not scanned text.
MIN_SCAN_SIDE = 32
#: Most image objects looked at on one page.
MAX_IMAGES_PER_PAGE = 64
_MAX_FORM_DEPTH = 4


@dataclass(frozen=True)
class PdfResult:
    units: list[tuple[str, Location]]
    title: str | None
    pending: list[int]
    """Scanned pages left for :func:`ocr_page` (``defer_ocr``), in order."""


def read_pdf(
    data: bytes,
    *,
    max_pages: int,
    max_ocr_pages: int,
    image_limits: ImageLimits,
    defer_ocr: bool = False,
) -> PdfResult:
    """Pages with a text layer as units; scanned pages read by OCR here, or, with
    ``defer_ocr``, listed in ``pending`` for one :func:`ocr_page` call each (so each page
    gets its own time budget)."""
    with _errors():
        reader = _open(data)
        pages = len(reader.pages)
        if pages > max_pages:
            raise ParseError(f"the PDF has {pages} pages, over the {max_pages}-page limit")
        units: list[tuple[str, Location]] = []
        pending: list[int] = []
        for number, page in enumerate(reader.pages, start=1):
            text = (page.extract_text() or "").strip()
            if text:
                units.append((text, Location(page=number)))
                continue
            if not _scans(page, image_limits, number):
                continue
            pending.append(number)
            if len(pending) > max_ocr_pages:
                raise ParseError(
                    f"the PDF has more than {max_ocr_pages} pages without a text layer "
                    f"(scanned), over the {max_ocr_pages}-page OCR limit"
                )
        if not defer_ocr:
            for number in pending:
                units.append(
                    _ocr_unit(_ocr(reader.pages[number - 1], image_limits, number), number)
                )
            units = [u for u in units if u[0].strip()]
            units.sort(key=lambda u: u[1].page or 0)
            pending = []
        title = None
        try:
            meta = reader.metadata
            title = str(meta.title) if meta and meta.title else None
        except Exception:  # a broken info dictionary costs the title only
            pass
    return PdfResult(units, title, pending)


def ocr_page(data: bytes, number: int, image_limits: ImageLimits) -> tuple[str, Location]:
    """One scanned page (from 1) read by OCR, as a unit (its text may be empty)."""
    with _errors():
        reader = _open(data)
        if not 1 <= number <= len(reader.pages):
            raise ParseError(f"the PDF has no page {number}")
        page = reader.pages[number - 1]
        _scans(page, image_limits, number)
        return _ocr_unit(_ocr(page, image_limits, number), number)


def _ocr_unit(text: str, number: int) -> tuple[str, Location]:
    return text, Location(page=number, region=IMAGE_TEXT)


def _open(data: bytes) -> Any:
    import pypdf
    from pypdf.errors import DependencyError, PyPdfError

    reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        # Owner-password-only PDFs open with an empty user password; others cannot.
        opened = False
        try:
            opened = bool(reader.decrypt(""))
        except (DependencyError, NotImplementedError, PyPdfError):
            pass
        if not opened:
            raise ParseError("the PDF is encrypted (password-protected)")
    return reader


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """pypdf's failures as the reasons a user reads."""
    from pypdf.errors import FileNotDecryptedError, PyPdfError

    try:
        yield
    except ParseError:
        raise
    except FileNotDecryptedError:
        raise ParseError("the PDF is encrypted (password-protected)") from None
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError):
        raise ParseError("the PDF is corrupt or truncated") from None
    except RecursionError:
        raise ParseError("the PDF is corrupt (nested too deeply)") from None


def _scans(page: Any, limits: ImageLimits, number: int) -> list[tuple[int, int]]:
    """Sizes of the page's images large enough to hold text, each checked against the
    limits from its dictionary (nothing decoded yet)."""
    found: list[tuple[int, int]] = []
    _walk(page.get("/Resources"), limits, number, found, 0)
    return [(w, h) for w, h in found if min(w, h) >= MIN_SCAN_SIDE]


def _walk(
    resources: Any, limits: ImageLimits, number: int, found: list[tuple[int, int]], depth: int
) -> None:
    if resources is None or depth > _MAX_FORM_DEPTH:
        return
    resources = resources.get_object()
    xobjects = resources.get("/XObject") if hasattr(resources, "get") else None
    if xobjects is None:
        return
    xobjects = xobjects.get_object()
    for name in list(xobjects.keys())[:MAX_IMAGES_PER_PAGE]:
        obj = xobjects[name].get_object()
        subtype = obj.get("/Subtype")
        if subtype == "/Image":
            width, height = int(obj.get("/Width", 0)), int(obj.get("/Height", 0))
            check_size(width, height, limits, f"an image on page {number}")
            found.append((width, height))
        elif subtype == "/Form":
            _walk(obj.get("/Resources"), limits, number, found, depth + 1)


def _ocr(page: Any, limits: ImageLimits, number: int) -> str:
    from workers.ingestion import ocr

    texts = []
    for i, image_file in enumerate(page.images):
        if i >= MAX_IMAGES_PER_PAGE:
            break
        img = image_file.image
        if img is None or min(img.size) < MIN_SCAN_SIDE:
            continue
        check_size(img.width, img.height, limits, f"an image on page {number}")
        text = ocr.image_text(img.convert("RGB"))
        if text.strip():
            texts.append(text)
    return "\n\n".join(texts)
