"""XLSX spreadsheets through openpyxl in read-only (streaming) mode, cached values only
(formulas are not evaluated): each sheet is a table whose first non-empty row is its
header, and each later row is one unit, ``header: value`` per line, located by sheet name
and row number — so a citation says "sheet 'Sales', rows 4-9".

Limits: the zip-bomb checks of every OOXML package (``archive``), at most ``max_rows``
rows and ``max_cells`` non-empty cells in the whole workbook, and columns past
``MAX_COLUMNS`` ignored. openpyxl parses XML through defusedxml when it is installed (it
is): no entity expansion.
"""

from __future__ import annotations

import datetime as dt
import zipfile
from typing import Any

from schemas.locations import Location
from workers.ingestion.archive import ZipLimits, check_zip, open_zip
from workers.ingestion.errors import ParseError

DEFAULT_MAX_ROWS = 200_000
DEFAULT_MAX_CELLS = 2_000_000
MAX_COLUMNS = 1_000
MAX_CELL_CHARS = 10_000


def read_xlsx(
    data: bytes,
    zip_limits: ZipLimits,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_cells: int = DEFAULT_MAX_CELLS,
) -> tuple[list[tuple[str, Location]], str | None]:
    """Units (one per data row) and the workbook's title."""
    with open_zip(data, "XLSX") as zf:
        check_zip(zf, zip_limits, "XLSX")
    import io

    import openpyxl

    try:
        book = openpyxl.load_workbook(
            io.BytesIO(data), read_only=True, data_only=True, keep_links=False
        )
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError, IndexError):
        raise ParseError("the XLSX workbook is corrupt") from None
    except Exception as exc:  # lxml/defusedxml errors from a broken or hostile part
        raise ParseError(f"the XLSX workbook is corrupt ({type(exc).__name__})") from None
    units: list[tuple[str, Location]] = []
    rows = cells = 0
    try:
        title = book.properties.title if book.properties else None
        for sheet in book.worksheets:
            header: list[str] | None = None
            for row in sheet.iter_rows():
                rows += 1
                if rows > max_rows:
                    raise ParseError(f"the workbook has more than {max_rows} rows, over the limit")
                values = [_cell(c.value) for c in row[:MAX_COLUMNS]]
                filled = [v for v in values if v]
                cells += len(filled)
                if cells > max_cells:
                    raise ParseError(
                        f"the workbook has more than {max_cells} non-empty cells, over the limit"
                    )
                if not filled:
                    continue
                number = _row_number(row)
                if header is None:
                    header = values
                    units.append((" | ".join(filled), Location(sheet=sheet.title, row=number)))
                    continue
                lines = [
                    f"{(header[i] if i < len(header) and header[i] else f'column {i + 1}')}: {v}"
                    for i, v in enumerate(values)
                    if v
                ]
                units.append(("\n".join(lines), Location(sheet=sheet.title, row=number)))
    except ParseError:
        raise
    except Exception as exc:  # a broken sheet part surfaces while streaming
        raise ParseError(f"the XLSX workbook is corrupt ({type(exc).__name__})") from None
    finally:
        book.close()
    return units, title or None


def _row_number(row: tuple[Any, ...]) -> int | None:
    for cell in row:
        number = getattr(cell, "row", None)
        if isinstance(number, int) and number >= 1:
            return number
    return None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        text = value.isoformat(sep=" ", timespec="seconds").removesuffix(" 00:00:00")
    elif isinstance(value, (dt.date, dt.time)):
        text = value.isoformat()
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return " ".join(text.split())[:MAX_CELL_CHARS]
