"""Turning an uploaded file into text, with its type taken from its content.

Detection: ``%PDF-`` is a PDF; a ZIP with ``word/document.xml`` is a DOCX (any other ZIP
or OLE2 file is refused); other binary content (a NUL byte in the first 8 KiB, bytes that
are not UTF-8/UTF-16 text, or a format ``puremagic`` names) is refused whatever its name;
text is HTML, JSON, CSV, Markdown or plain text — the name or declared type chooses among
text formats only, and the content must then parse as that format.

Every failure raises :class:`ParseError` (an ``invalid_request``) with a sentence a user
can act on; the job ends ``failed`` with it and is not retried. Limits bound the work a
hostile file can cause: file size, PDF pages, DOCX members and expanded size and ratio
(zip bombs), extracted text length.
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

from bus.errors import InvalidRequest

DEFAULT_MAX_PDF_PAGES = 2_000
DEFAULT_MAX_UNZIPPED_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_ZIP_RATIO = 200
DEFAULT_MAX_ZIP_MEMBERS = 5_000
DEFAULT_MAX_TEXT_CHARS = 20_000_000
#: Ratio checks apply to members at least this large (tiny XML parts compress very well).
_RATIO_MIN_BYTES = 1024 * 1024

TEXT_KINDS = ("txt", "md", "html", "csv", "json")
KINDS = (*TEXT_KINDS, "pdf", "docx")
MIME = {
    "txt": "text/plain",
    "md": "text/markdown",
    "html": "text/html",
    "csv": "text/csv",
    "json": "application/json",
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
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


class ParseError(InvalidRequest):
    """The file cannot be ingested; the message says why, for the user."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pdf_pages: int = DEFAULT_MAX_PDF_PAGES
    max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES
    max_zip_ratio: int = DEFAULT_MAX_ZIP_RATIO
    max_zip_members: int = DEFAULT_MAX_ZIP_MEMBERS
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS


@dataclass(frozen=True)
class Parsed:
    kind: str
    text: str
    title: str | None = None

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
    data: bytes, limits: Limits, *, filename: str | None = None, content_type: str | None = None
) -> Parsed:
    if not data:
        raise ParseError("the file is empty")
    if len(data) > limits.max_bytes:
        raise ParseError(f"the file has {len(data)} bytes, over the {limits.max_bytes}-byte limit")
    hint = declared_kind(filename, content_type)
    if data.startswith(b"%PDF-"):
        parsed = _pdf(data, limits)
    elif data.startswith(b"PK\x03\x04"):
        parsed = _docx(data, limits, filename)
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


def _tidy(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[ \t\f\v]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ---------------------------------------------------------------- binary formats


def _pdf(data: bytes, limits: Limits) -> Parsed:
    import pypdf
    from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError

    try:
        reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            # Owner-password-only PDFs open with an empty user password; others cannot.
            try:
                opened = reader.decrypt("")
            except (DependencyError, NotImplementedError, PyPdfError):
                opened = 0
            if not opened:
                raise ParseError("the PDF is encrypted (password-protected)")
        pages = len(reader.pages)
        if pages > limits.max_pdf_pages:
            raise ParseError(
                f"the PDF has {pages} pages, over the {limits.max_pdf_pages}-page limit"
            )
        texts = [page.extract_text() or "" for page in reader.pages]
        title = None
        try:
            meta = reader.metadata
            title = str(meta.title) if meta and meta.title else None
        except (PyPdfError, ValueError, KeyError, TypeError):
            pass
    except ParseError:
        raise
    except FileNotDecryptedError:
        raise ParseError("the PDF is encrypted (password-protected)") from None
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError):
        raise ParseError("the PDF is corrupt or truncated") from None
    except RecursionError:
        raise ParseError("the PDF is corrupt (nested too deeply)") from None
    return Parsed("pdf", "\n\n".join(t.strip() for t in texts if t.strip()), title)


def _check_zip(zf: zipfile.ZipFile, limits: Limits, filename: str | None) -> None:
    infos = zf.infolist()
    if len(infos) > limits.max_zip_members:
        raise ParseError(
            f"the DOCX has {len(infos)} parts, over the {limits.max_zip_members} limit"
        )
    total = 0
    for info in infos:
        total += info.file_size
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size >= _RATIO_MIN_BYTES and ratio > limits.max_zip_ratio:
            raise ParseError(
                f"the DOCX part {info.filename!r} expands {ratio:.0f}-fold "
                f"(limit {limits.max_zip_ratio}): refused as a possible zip bomb"
            )
    if total > limits.max_unzipped_bytes:
        raise ParseError(
            f"the DOCX expands to {total} bytes, over the {limits.max_unzipped_bytes}-byte "
            "limit: refused as a possible zip bomb"
        )


def _docx(data: bytes, limits: Limits, filename: str | None) -> Parsed:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ParseError("the file is a corrupt ZIP/DOCX archive" + _named(filename)) from None
    with zf:
        names = set(zf.namelist())
        if "word/document.xml" not in names:
            raise ParseError("the file is a ZIP archive but not a DOCX document" + _named(filename))
        _check_zip(zf, limits, filename)
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
