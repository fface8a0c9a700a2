"""Multi-modal parsing as pure functions: images and scanned pages through offline OCR,
spreadsheets, slide decks; every unit located; bombs refused before decoding; chunks
keep their locations. No infrastructure needed."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import zipfile

import pytest

from schemas.locations import Location, Span
from tests.media import (
    gif_many_frames,
    image_bytes,
    png_header_bomb,
    pptx_bytes,
    scanned_pdf,
    xlsx_bytes,
    xlsx_zip_bomb,
)
from workers.ingestion import pdf
from workers.ingestion.images import gif_frames
from workers.ingestion.parsing import MIME, Limits, ParseError, finish_pdf, parse
from workers.rag.located import chunk_spans

LIMITS = Limits(max_bytes=20 * 1024 * 1024)


def units(parsed) -> list[tuple[str, str]]:
    return [(parsed.text[s.start : s.end], s.location.label) for s in parsed.spans]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "GIF"])
def test_text_in_an_image_is_read_by_ocr(fmt):
    # JPEG at quality 90: at Pillow's default 75 the artefacts make OCR lose word spaces.
    extra = {"quality": 90} if fmt == "JPEG" else {}
    data = image_bytes(["Invoice number 4711", "Total due 93 euros"], fmt, **extra)
    parsed = parse(data, LIMITS, filename=f"scan.{fmt.lower()}")
    assert parsed.content_type == MIME[parsed.kind] and parsed.content_type.startswith("image/")
    assert "Invoice number 4711" in parsed.text and "93 euros" in parsed.text
    assert units(parsed) == [(parsed.text, "image text")]


def test_a_scanned_pdf_is_read_page_by_page_and_keeps_its_text_layer_where_it_has_one():
    data = scanned_pdf(["Owls hunt at night"], "Foxes live in dens.", ["The badger sleeps"])
    parsed = parse(data, LIMITS, filename="mixed.pdf")
    assert parsed.kind == "pdf"
    assert units(parsed) == [
        ("Owls hunt at night", "page 1, image text"),
        ("Foxes live in dens.", "page 2"),
        ("The badger sleeps", "page 3, image text"),
    ]


def test_scanned_pages_can_be_left_for_one_ocr_call_each():
    data = scanned_pdf(["Owls hunt at night"], "Foxes live in dens.", ["The badger sleeps"])
    deferred = parse(data, LIMITS, defer_ocr=True)
    assert deferred.pending_ocr == (1, 3) and deferred.text == ""
    units = [*deferred.units, *(pdf.ocr_page(data, n, LIMITS.image) for n in (3, 1))]
    assert finish_pdf(units, LIMITS) == parse(data, LIMITS)


def test_a_workbook_becomes_one_unit_per_row_with_its_header():
    data = xlsx_bytes(
        {
            "Inventory": [["Part", "Warehouse", "Quantity"], ["bolt", "Lyon", 40], [None, None]],
            "Prices": [["Part", "Price"], ["flux capacitor", 1200.5]],
        }
    )
    parsed = parse(data, LIMITS, filename="stock.xlsx")
    assert parsed.kind == "xlsx"
    assert units(parsed) == [
        ("Part | Warehouse | Quantity", "sheet 'Inventory' row 1"),
        ("Part: bolt\nWarehouse: Lyon\nQuantity: 40", "sheet 'Inventory' row 2"),
        ("Part | Price", "sheet 'Prices' row 1"),
        ("Part: flux capacitor\nPrice: 1200.5", "sheet 'Prices' row 2"),
    ]


def test_a_deck_becomes_one_unit_per_slide_and_per_slide_notes():
    data = pptx_bytes(
        [("Roadmap", "Ship in March.", "Mention the dates."), ("Risks", "Cranes.", None)]
    )
    parsed = parse(data, LIMITS, filename="plan.pptx")
    assert parsed.kind == "pptx"
    assert units(parsed) == [
        ("Roadmap\nShip in March.", "slide 1"),
        ("Mention the dates.", "slide 1, notes"),
        ("Risks\nCranes.", "slide 2"),
    ]


def test_a_gif_is_counted_frame_by_frame_without_decoding():
    assert gif_frames(gif_many_frames(7), 100) == 7
    assert gif_frames(gif_many_frames(10_000), 1001) == 1001


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("huge.png", png_header_bomb(), "pixel limit: refused as a possible decompression"),
        ("wide.png", png_header_bomb(30_000, 10), "decompression bomb"),
        ("frames.gif", gif_many_frames(10_000), "more than 1000 frames"),
        ("bomb.xlsx", xlsx_zip_bomb(), "zip bomb"),
        ("blank.png", image_bytes([]), "no text was recognised"),
        ("cut.png", image_bytes(["x"])[:200], "corrupt or truncated"),
        ("empty.xlsx", xlsx_bytes({"Empty": []}), "sheets are empty"),
    ],
)
def test_hostile_or_empty_files_are_refused_with_a_reason(name, data, reason):
    with pytest.raises(ParseError) as err:
        parse(data, LIMITS, filename=name)
    assert err.value.code == "invalid_request"
    assert reason in err.value.message


def test_many_parts_or_rows_are_refused():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("xl/workbook.xml", "<workbook/>")
        for i in range(60):
            zf.writestr(f"xl/worksheets/s{i}.xml", "<x/>")
    with pytest.raises(ParseError, match="over the 50 limit"):
        parse(out.getvalue(), Limits(max_bytes=1 << 20, max_zip_members=50))
    rows = xlsx_bytes({"S": [["n"], *[[i] for i in range(30)]]})
    with pytest.raises(ParseError, match="more than 10 rows"):
        parse(rows, Limits(max_bytes=1 << 20, max_sheet_rows=10))


def test_a_scanned_page_with_an_oversized_image_is_refused_before_decoding():
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (3000, 3000), 255).save(buf, "PNG")
    buf.seek(0)
    pdf.image(buf, x=0, y=0, w=200)
    with pytest.raises(ParseError, match="an image on page 1 is 3000 x 3000"):
        parse(bytes(pdf.output()), Limits(max_bytes=1 << 22, max_image_pixels=1_000_000))


def test_each_row_is_a_chunk_citing_its_sheet_and_row():
    rows = [f"Part: bolt {i}\nQuantity: {i}" for i in range(5)]
    text = "\n\n".join(rows)
    spans, at = [], 0
    for i, row in enumerate(rows):
        spans.append(Span(start=at, end=at + len(row), location=Location(sheet="S", row=2 * i + 2)))
        at += len(row) + 2
    pieces = chunk_spans(text, spans)
    assert [(p.text, p.section, p.location.label) for p in pieces] == [
        (row, "S", f"sheet 'S' row {2 * i + 2}") for i, row in enumerate(rows)
    ]


def test_pages_never_share_a_chunk_and_long_pages_split_keeping_their_page():
    page1 = "Short page about owls."
    page2 = " ".join(f"Sentence {i} about foxes." for i in range(200))
    text = page1 + "\n\n" + page2
    spans = [
        Span(start=0, end=len(page1), location=Location(page=1)),
        Span(start=len(page1) + 2, end=len(text), location=Location(page=2)),
    ]
    pieces = chunk_spans(text, spans)
    assert pieces[0].text == page1 and pieces[0].location == Location(page=1)
    assert len(pieces) > 2 and all(p.location == Location(page=2) for p in pieces[1:])


def test_transcript_segments_merge_into_a_time_range():
    a, b = "Welcome aboard.", "The crane lifts ships."
    text = a + "\n\n" + b
    spans = [
        Span(start=0, end=len(a), location=Location(start_seconds=0.0, end_seconds=2.5)),
        Span(start=len(a) + 2, end=len(text), location=Location(start_seconds=2.5, end_seconds=65)),
    ]
    [piece] = chunk_spans(text, spans)
    assert piece.location.label == "00:00:00-00:01:05"


_OFFLINE_OCR = r"""
import socket, sys
attempts = []
real_gai, real_connect = socket.getaddrinfo, socket.socket.connect

def gai(host, *a, **k):
    if host not in (None, "localhost", "127.0.0.1", "::1"):
        attempts.append(str(host))
        raise socket.gaierror("no network in this test")
    return real_gai(host, *a, **k)

def connect(self, addr):
    host = addr[0] if isinstance(addr, tuple) else addr
    if self.family in (socket.AF_INET, socket.AF_INET6) and not str(host).startswith("127."):
        attempts.append(str(addr))
        raise OSError("no network in this test")
    return real_connect(self, addr)

socket.getaddrinfo, socket.socket.connect = gai, connect
from tests.media import image_bytes
from workers.ingestion.parsing import Limits, parse
print("TEXT", parse(image_bytes(["Offline reading"]), Limits(max_bytes=1 << 22)).text)
print("ATTEMPTS", attempts)
"""


async def test_ocr_runs_offline_on_packaged_weights():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OFFLINE_OCR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    out = stdout.decode()
    assert "TEXT Offline reading" in out and "ATTEMPTS []" in out, out
