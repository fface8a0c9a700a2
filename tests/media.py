"""Files the multi-modal ingestion tests make themselves: text rendered into images and
image-only ("scanned") PDFs, spreadsheets, slide decks, a short WAV, and hostile ones
(image, GIF and zip bombs)."""

from __future__ import annotations

import io
import math
import struct
import wave
import zipfile
import zlib

import openpyxl
import pptx
from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFont


def render(
    lines: list[str], size: tuple[int, int] = (1200, 500), font_size: int = 36
) -> Image.Image:
    """Black text on white, one line per entry (Pillow's built-in scalable font)."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    for i, line in enumerate(lines):
        draw.text((40, 40 + i * int(font_size * 1.8)), line, fill="black", font=font)
    return img


def image_bytes(lines: list[str], fmt: str = "PNG", **kw: object) -> bytes:
    out = io.BytesIO()
    img = render(lines)
    if fmt == "GIF":
        img = img.convert("P")
    img.save(out, fmt, **kw)
    return out.getvalue()


def scanned_pdf(*pages: list[str] | str) -> bytes:
    """A PDF whose pages are images of text (a list of lines) or, for a str, a text layer."""
    pdf = FPDF()
    for page in pages:
        pdf.add_page()
        if isinstance(page, str):
            pdf.set_font("helvetica", size=12)
            pdf.multi_cell(0, 8, page)
            continue
        buf = io.BytesIO()
        render(page, (1240, 600)).save(buf, "PNG")
        buf.seek(0)
        pdf.image(buf, x=0, y=0, w=210)
    return bytes(pdf.output())


def xlsx_bytes(sheets: dict[str, list[list[object]]]) -> bytes:
    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def pptx_bytes(slides: list[tuple[str, str, str | None]]) -> bytes:
    """Slides of (title, body, notes)."""
    deck = pptx.Presentation()
    for title, body, notes in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def wav_bytes(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A tone: the scripted transcription server does not listen, it only needs a WAV."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
            for i in range(int(seconds * rate))
        )
        w.writeframes(frames)
    return out.getvalue()


# ---------------------------------------------------------------- bombs


def png_header_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG signature and IHDR declaring ``width`` x ``height``, with a tiny IDAT:
    a few hundred bytes that would be 7.5 GB of RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif_many_frames(frames: int = 10_000) -> bytes:
    """A 1 x 1 GIF with ``frames`` frames (~20 bytes each)."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame * frames + b"\x3b"


def xlsx_zip_bomb() -> bytes:
    """A real workbook whose sheet part is padded to expand ~1000-fold to 30 MiB."""
    real = xlsx_bytes({"Sheet": [["a", "b"], [1, 2]]})
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(real)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "xl/worksheets/sheet1.xml":
                with dst.open(info.filename, "w") as part:
                    part.write(data)
                    block = b" " * (1024 * 1024)
                    for _ in range(30):
                        part.write(block)
            else:
                dst.writestr(info, data)
    return out.getvalue()
