"""Turning an uploaded file into text, with its type taken from its content.

Detection: ``%PDF-`` is a PDF (``pdf``: text layer, OCR of scanned pages); a ZIP with
``word/document.xml`` is a DOCX, with ``xl/workbook.xml`` an XLSX (``sheets``), with
``ppt/presentation.xml`` a PPTX (``slides``) (any other ZIP or OLE2 file is refused); PNG,
JPEG, GIF, TIFF and WebP are read by OCR (``images``, ``ocr``); audio is recognised
(``audio``) and transcribed by the service through the gateway; other binary content (a
NUL byte in the first 8 KiB, bytes that are not UTF-8/UTF-16 text, or a format
``puremagic`` names) is refused whatever its name;
text is HTML, JSON, CSV, Markdown or plain text — the name or declared type chooses among
text formats only, and the content must then parse as that format.

Every failure raises :class:`ParseError` (an ``invalid_request``) with a sentence a user
can act on; the job ends ``failed`` with it and is not retried. Limits bound the work a
hostile file can cause: file size, PDF pages, DOCX members and expanded size and ratio
(zip bombs), extracted text length, image size and frames, OCR pages, sheet rows and
cells, slides. Formats with places to cite (pages, rows, slides, time) also return
:class:`~schemas.locations.Span` s: which characters of the text came from where.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from dataclasses import dataclass
from typing import Any

import puremagic

from schemas.locations import Location, Span
from workers.ingestion import audio, images, pdf, sheets, slides
from workers.ingestion.archive import ZipLimits, check_zip, open_zip
from workers.ingestion.errors import ParseError

DEFAULT_MAX_PDF_PAGES = 2_000
DEFAULT_MAX_UNZIPPED_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_ZIP_RATIO = 200
DEFAULT_MAX_ZIP_MEMBERS = 5_000
DEFAULT_MAX_TEXT_CHARS = 20_000_000
DEFAULT_MAX_AUDIO_SECONDS = 4 * 3600

TEXT_KINDS = ("txt", "md", "html", "csv", "json")
KINDS = (*TEXT_KINDS, "pdf", "docx", "xlsx", "pptx", *images.KINDS, *audio.KINDS)
MIME = {
    "txt": "text/plain",
    "md": "text/markdown",
    "html": "text/html",
    "csv": "text/csv",
    "json": "application/json",
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    **images.MIME,
    **audio.MIME,
}
_EXTENSIONS = {
    "txt": "txt",
    "text": "txt",
    "log": "txt",
    "md": "md",
    "markdown": "md",
    "html": "html",
    "htm": "html",
    "xhtml": "html",
    "csv": "csv",
    "json": "json",
    "pdf": "pdf",
    "docx": "docx",
}
_MIME_KINDS = {v: k for k, v in MIME.items()} | {"text/x-markdown": "md", "text/json": "json"}


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pdf_pages: int = DEFAULT_MAX_PDF_PAGES
    max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES
    max_zip_ratio: int = DEFAULT_MAX_ZIP_RATIO
    max_zip_members: int = DEFAULT_MAX_ZIP_MEMBERS
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_ocr_pages: int = pdf.DEFAULT_MAX_OCR_PAGES
    max_image_pixels: int = images.DEFAULT_MAX_IMAGE_PIXELS
    max_image_side: int = images.DEFAULT_MAX_IMAGE_SIDE
    max_image_frames: int = images.DEFAULT_MAX_IMAGE_FRAMES
    max_sheet_rows: int = sheets.DEFAULT_MAX_ROWS
    max_sheet_cells: int = sheets.DEFAULT_MAX_CELLS
    max_slides: int = slides.DEFAULT_MAX_SLIDES
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS

    @property
    def zip(self) -> ZipLimits:
        return ZipLimits(self.max_zip_members, self.max_unzipped_bytes, self.max_zip_ratio)

    @property
    def image(self) -> images.ImageLimits:
        return images.ImageLimits(self.max_image_pixels, self.max_image_side, self.max_image_frames)


@dataclass(frozen=True)
class Parsed:
    kind: str
    text: str
    title: str | None = None
    spans: tuple[Span, ...] = ()
    """Where each unit of ``text`` comes from (empty for formats without locations)."""
    units: tuple[tuple[str, Location], ...] = ()
    pending_ocr: tuple[int, ...] = ()
    """``parse(defer_ocr=True)`` of a PDF with scanned pages: ``text`` is empty, ``units``
    holds the pages read so far and these pages are left for ``pdf.ocr_page``; then
    :func:`from_units` joins everything."""

    @property
    def content_type(self) -> str:
        return MIME[self.kind]


def declared_kind(filename: str | None, content_type: str | None) -> str | None:
    """What the name or the declared type claims (a hint, never trusted for binaries)."""
    if content_type:
        kind = _MIME_KINDS.get(content_type.split(";")[0].strip().lower())
        if kind:
            return kind
    if filename and "." in filename:
        return _EXTENSIONS.get(filename.rsplit(".", 1)[1].lower())
    return None


def _named(filename: str | None) -> str:
    return f" (named {filename!r})" if filename else ""


def parse(
    data: bytes,
    limits: Limits,
    *,
    filename: str | None = None,
    content_type: str | None = None,
    defer_ocr: bool = False,
) -> Parsed:
    """The file's text (and spans). ``defer_ocr``: leave a PDF's scanned pages to one
    ``pdf.ocr_page`` call each (see :attr:`Parsed.pending_ocr`)."""
    if not data:
        raise ParseError("the file is empty")
    if len(data) > limits.max_bytes:
        raise ParseError(f"the file has {len(data)} bytes, over the {limits.max_bytes}-byte limit")
    hint = declared_kind(filename, content_type)
    if data.startswith(b"%PDF-"):
        result = pdf.read_pdf(
            data,
            max_pages=limits.max_pdf_pages,
            max_ocr_pages=limits.max_ocr_pages,
            image_limits=limits.image,
            defer_ocr=defer_ocr,
        )
        if result.pending:
            return Parsed(
                "pdf",
                "",
                result.title,
                units=tuple(result.units),
                pending_ocr=tuple(result.pending),
            )
        return finish_pdf(result.units, limits, result.title)
    elif data.startswith(b"PK\x03\x04"):
        zip_kind = _zip_kind(data, filename)
        if zip_kind == "xlsx":
            units, title = sheets.read_xlsx(
                data,
                limits.zip,
                max_rows=limits.max_sheet_rows,
                max_cells=limits.max_sheet_cells,
            )
            return from_units("xlsx", units, limits, title)
        if zip_kind == "pptx":
            units, title = slides.read_pptx(data, limits.zip, max_slides=limits.max_slides)
            return from_units("pptx", units, limits, title)
        parsed = _docx(data, limits, filename)
    elif image_kind := images.kind_of(data):
        return from_units(image_kind, images.read_image(data, limits.image), limits)
    elif audio.kind_of(data):
        raise ParseError("audio is transcribed through the gateway, not parsed here")
    elif data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        raise ParseError(
            "legacy Microsoft Office (OLE2) files are not supported" + _named(filename)
        )
    else:
        text = _as_text(data, filename)
        parsed = _text(text, hint if hint in TEXT_KINDS else None)
    text = _tidy(parsed.text)
    if len(text) > limits.max_text_chars:
        raise ParseError(
            f"the extracted text has {len(text)} characters, over the "
            f"{limits.max_text_chars}-character limit"
        )
    if not text.strip():
        what = "the PDF has no text layer (scanned?)" if parsed.kind == "pdf" else "no text"
        raise ParseError(f"no text could be extracted: {what}")
    return Parsed(parsed.kind, text, parsed.title)


def from_units(
    kind: str, units: list[tuple[str, Location]], limits: Limits, title: str | None = None
) -> Parsed:
    """Join located units into one text, each tidied, separated by a blank line, and
    record the characters each one occupies."""
    parts: list[str] = []
    spans: list[Span] = []
    size = 0
    for raw, location in units:
        text = _tidy(raw)
        if not text:
            continue
        if parts:
            size += 2  # the "\n\n" before this unit
        spans.append(Span(start=size, end=size + len(text), location=location))
        parts.append(text)
        size += len(text)
        if size > limits.max_text_chars:
            raise ParseError(
                f"the extracted text has more than {limits.max_text_chars} characters, "
                "over the limit"
            )
    if not parts:
        raise ParseError(f"no text could be extracted: {_NOTHING.get(kind, 'no text')}")
    return Parsed(kind, "\n\n".join(parts), title, tuple(spans))


def finish_pdf(
    units: list[tuple[str, Location]], limits: Limits, title: str | None = None
) -> Parsed:
    """A PDF's pages (text layer and OCR), in page order, as one parsed document."""
    units = sorted((u for u in units if u[0].strip()), key=lambda u: u[1].page or 0)
    if not units:
        raise ParseError(
            "no text could be extracted: the PDF has neither a text layer nor images with text"
        )
    return from_units("pdf", units, limits, title)


_NOTHING = {
    **{k: "no text was recognised in the image" for k in images.KINDS},
    **{k: "the recording has no speech" for k in audio.KINDS},
    "xlsx": "the workbook's sheets are empty",
    "pptx": "the slides have no text",
}


def _zip_kind(data: bytes, filename: str | None) -> str:
    with open_zip(data, "DOCX") as zf:
        names = set(zf.namelist())
    if "word/document.xml" in names:
        return "docx"
    if "xl/workbook.xml" in names:
        return "xlsx"
    if "ppt/presentation.xml" in names:
        return "pptx"
    raise ParseError(
        "the file is a ZIP archive but not a DOCX, XLSX or PPTX document" + _named(filename)
    )


def _tidy(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    # Per line, not `re.sub(r"[ \t\f\v]+\n", ...)`: that retries the whole run of spaces
    # at each of its positions, quadratic on a long run with no newline after it.
    text = "\n".join(line.rstrip(" \t\f\v") for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ---------------------------------------------------------------- binary formats


def _docx(data: bytes, limits: Limits, filename: str | None) -> Parsed:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ParseError("the file is a corrupt ZIP/DOCX archive" + _named(filename)) from None
    with zf:
        check_zip(zf, limits.zip, "DOCX")
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError):
        raise ParseError("the DOCX document is corrupt") from None
    except Exception as exc:  # lxml.etree.XMLSyntaxError and friends from a broken part
        raise ParseError(f"the DOCX document is corrupt ({type(exc).__name__})") from None
    lines: list[str] = []
    for block in document.element.body.iterchildren():
        tag = block.tag.rsplit("}", 1)[-1]
        if tag == "p":
            lines.append(_docx_paragraph(block, document))
        elif tag == "tbl":
            for row in block.iter("{*}tr"):
                cells = ["".join(t.text or "" for t in c.iter("{*}t")) for c in row.iter("{*}tc")]
                lines.append(" | ".join(c.strip() for c in cells))
            lines.append("")
    title = document.core_properties.title or None
    return Parsed("docx", "\n\n".join(ln for ln in lines if ln is not None), title)


def _docx_paragraph(p: Any, document: Any) -> str:
    from docx.text.paragraph import Paragraph

    para = Paragraph(p, document)
    text = para.text.strip()
    style = (para.style.name if para.style is not None else "") or ""
    if text and style == "Title":
        return f"# {text}"
    m = re.match(r"Heading (\d)", style)
    if text and m:
        return "#" * min(6, int(m.group(1))) + " " + text
    return text


# ---------------------------------------------------------------- text formats


def _as_text(data: bytes, filename: str | None) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise ParseError("the file claims UTF-16 but is not valid UTF-16 text") from None
    head = data[:8192]
    if b"\x00" in head:
        raise ParseError(
            f"binary content ({_binary_name(data)}) is not a supported type" + _named(filename)
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # Not UTF-8: legacy single-byte text is accepted only if it looks like text.
    printable = sum(1 for b in head if b >= 0x20 or b in (9, 10, 13))
    known = _binary_name(data)
    if printable / max(1, len(head)) < 0.95 or known != "unknown binary data":
        raise ParseError(f"binary content ({known}) is not a supported type" + _named(filename))
    return data.decode("cp1252", errors="replace")


def _binary_name(data: bytes) -> str:
    try:
        match = puremagic.magic_string(data[:4096])
    except (puremagic.PureError, ValueError):
        return "unknown binary data"
    if not match:
        return "unknown binary data"
    return str(match[0].name or match[0].extension or "unknown binary data")


def _sniff(text: str) -> str:
    head = text.lstrip()[:1024].lower()
    if head.startswith(("<!doctype html", "<html")) or re.search(r"<(body|div|p|h1)\b", head):
        return "html"
    if head[:1] in ("{", "["):
        try:
            json.loads(text)
            return "json"
        except ValueError:
            pass
    return "txt"


def _text(text: str, hint: str | None) -> Parsed:
    kind = hint or _sniff(text)
    if kind == "html":
        return _html(text)
    if kind == "json":
        return _json(text)
    if kind == "csv":
        return _csv(text)
    return Parsed(kind, text)


def _html(text: str) -> Parsed:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "lxml")
    title = soup.title.get_text(strip=True) if soup.title else None
    for tag in soup(["head", "script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    for level in range(1, 7):
        for h in soup.find_all(f"h{level}"):
            h.insert_before("\n\n" + "#" * level + " ")
            h.insert_after("\n\n")
    for tag in soup.find_all(
        [
            "p",
            "div",
            "li",
            "tr",
            "pre",
            "blockquote",
            "section",
            "article",
            "table",
            "ul",
            "ol",
            "dd",
            "dt",
            "header",
            "footer",
            "main",
        ]
    ):
        tag.insert_after("\n\n")
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for cell in soup.find_all(["td", "th"]):
        cell.insert_after(" | ")
    raw = soup.get_text()
    lines = [re.sub(r"\s+", " ", ln).strip() for ln in raw.split("\n")]
    return Parsed("html", "\n".join(lines), title or None)


def _flatten(value: Any, path: str, out: list[str], depth: int = 0) -> None:
    if depth > 64:
        raise ParseError("the JSON document is nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else str(k), out, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flatten(v, f"{path}[{i}]", out, depth + 1)
    elif value is not None:
        out.append(f"{path}: {value}" if path else str(value))


def _json(text: str) -> Parsed:
    try:
        value = json.loads(text)
    except RecursionError:
        raise ParseError("the JSON document is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ParseError(f"the file is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError:
        raise ParseError("the file is not valid JSON") from None
    # A list of records: one paragraph per record, so chunks keep records whole.
    items = value if isinstance(value, list) else [value]
    paragraphs = []
    for item in items:
        lines: list[str] = []
        _flatten(item, "", lines)
        paragraphs.append("\n".join(lines))
    return Parsed("json", "\n\n".join(p for p in paragraphs if p))


def _csv(text: str) -> Parsed:
    try:
        dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = list(csv.reader(io.StringIO(text), dialect))
    except csv.Error as exc:
        raise ParseError(f"the file is not valid CSV ({exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return Parsed("csv", "")
    header, body = rows[0], rows[1:]
    if not body:
        return Parsed("csv", " | ".join(header))
    # One paragraph per row, "column: value" so each row reads on its own.
    paragraphs = [
        "\n".join(
            f"{h.strip() or f'column {i + 1}'}: {v.strip()}"
            for i, (h, v) in enumerate(zip(header, row, strict=False))
            if v.strip()
        )
        for row in body
    ]
    return Parsed("csv", "\n\n".join(p for p in paragraphs if p))
