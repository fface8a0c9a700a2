"""What each file type costs to parse on this machine: seconds per page, slide, image or
thousand rows, in one process, against a baseline in the same run (PDF pages with a text
layer, the cheapest paged format).

Files are generated here (text rendered into images and image-only PDF pages with
Pillow/fpdf2, a workbook with openpyxl, a deck with python-pptx). The OCR engine's load
(once per parse process) is reported apart from the per-page figures. Audio is not
parsed here: its cost is the transcription provider's (see docs/services/ingestion.md).

    .venv/bin/python bench/bench_ingestion_formats.py [--pages 4] [--rows 5000]
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fpdf import FPDF  # noqa: E402

from tests.media import pptx_bytes, render, xlsx_bytes  # noqa: E402
from workers.ingestion import ocr  # noqa: E402
from workers.ingestion.parsing import Limits, parse  # noqa: E402

LIMITS = Limits(max_bytes=512 * 1024 * 1024)
LINE = "Pump {i}: check the seal pressure before the turbine starts, then log it."


def page_lines(n: int = 28) -> list[str]:
    return [LINE.format(i=i) for i in range(n)]


def text_pdf(pages: int) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for _ in range(pages):
        pdf.add_page()
        pdf.multi_cell(0, 7, "\n".join(page_lines()))
    return bytes(pdf.output())


def scanned_pdf(pages: int) -> bytes:
    """A4 at 150 dpi (1240 x 1754), 28 lines of 11-pt-sized text per page."""
    pdf = FPDF()
    for _ in range(pages):
        pdf.add_page()
        buf = io.BytesIO()
        render(page_lines(), (1240, 1754), font_size=28).save(buf, "PNG")
        buf.seek(0)
        pdf.image(buf, x=0, y=0, w=210)
    return bytes(pdf.output())


def png(size: tuple[int, int], lines: int, font: int) -> bytes:
    out = io.BytesIO()
    render(page_lines(lines), size, font_size=font).save(out, "PNG")
    return out.getvalue()


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--slides", type=int, default=50)
    args = parser.parse_args()

    rows: list[tuple[str, float, str]] = []

    def report(name: str, seconds: float, per: float, unit: str) -> None:
        rows.append((name, seconds / per, unit))

    base = text_pdf(args.pages * 5)
    report(
        "PDF, text layer (baseline)", timed(lambda: parse(base, LIMITS), 3), args.pages * 5, "page"
    )

    started = time.perf_counter()
    ocr.engine()
    load = time.perf_counter() - started

    scan = scanned_pdf(args.pages)
    report("PDF, scanned page (OCR)", timed(lambda: parse(scan, LIMITS)), args.pages, "page")
    shot = png((1200, 500), 6, 30)
    report("PNG 1200x500, 6 lines (OCR)", timed(lambda: parse(shot, LIMITS), 3), 1, "image")
    full = png((1240, 1754), 28, 28)
    report("PNG 1240x1754, 28 lines (OCR)", timed(lambda: parse(full, LIMITS)), 1, "image")
    book = xlsx_bytes(
        {
            "Data": [["id", "pump", "site", "pressure", "note"]]
            + [[i, f"pump {i}", "Lyon", i * 0.5, "seal checked"] for i in range(args.rows)]
        }
    )
    report(
        f"XLSX, {args.rows} rows x 5",
        timed(lambda: parse(book, LIMITS), 3),
        args.rows / 1000,
        "1000 rows",
    )
    deck = pptx_bytes(
        [(f"Slide {i}", LINE.format(i=i), "Notes for the speaker.") for i in range(args.slides)]
    )
    report(
        f"PPTX, {args.slides} slides", timed(lambda: parse(deck, LIMITS), 3), args.slides, "slide"
    )

    baseline = rows[0][1]
    print(f"OCR engine load (once per parse process): {load:.2f} s")
    print(f"{'format':34} {'seconds per unit':>18} {'x baseline':>11}")
    for name, per_unit, unit in rows:
        print(f"{name:34} {per_unit:12.4f} /{unit:<6} {per_unit / baseline:10.1f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
