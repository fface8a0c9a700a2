"""Zip-bomb checks for Office Open XML packages (DOCX, XLSX, PPTX), from the ZIP's
central directory before any member is inflated: member count, declared expanded size,
and the expansion ratio of large members."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from workers.ingestion.errors import ParseError

#: Ratio checks apply to members at least this large (tiny XML parts compress very well).
RATIO_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ZipLimits:
    max_members: int
    max_unzipped_bytes: int
    max_ratio: int


def open_zip(data: bytes, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ParseError(f"the file is a corrupt ZIP/{what} archive") from None


def check_zip(zf: zipfile.ZipFile, limits: ZipLimits, what: str) -> None:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise ParseError(f"the {what} has {len(infos)} parts, over the {limits.max_members} limit")
    total = 0
    for info in infos:
        total += info.file_size
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size >= RATIO_MIN_BYTES and ratio > limits.max_ratio:
            raise ParseError(
                f"the {what} part {info.filename!r} expands {ratio:.0f}-fold "
                f"(limit {limits.max_ratio}): refused as a possible zip bomb"
            )
    if total > limits.max_unzipped_bytes:
        raise ParseError(
            f"the {what} expands to {total} bytes, over the {limits.max_unzipped_bytes}-byte "
            "limit: refused as a possible zip bomb"
        )
