"""Images (PNG, JPEG, TIFF, WebP, GIF's first frame): type from the magic bytes, bomb
checks on the header before any pixel is decoded, then OCR (``workers.ingestion.ocr``).

A hostile image costs memory when decoded (a 50,000 x 50,000 PNG is a few KiB on disk and
7.5 GB as pixels) or time when every frame is walked. So, before decoding: the width and
height from the header (Pillow's ``Image.open`` reads only the header) must stay under
``max_image_pixels`` and ``max_image_side``; frames are counted from the header or, for
GIF, by walking the block structure without decoding (linear in the file size) and must
stay under ``max_image_frames``. Pillow's own bomb guard (``Image.MAX_IMAGE_PIXELS``) is
set to the same limit as a second line. Only the first frame is decoded.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas.locations import IMAGE_TEXT, Location
from workers.ingestion.errors import ParseError

if TYPE_CHECKING:
    from PIL import Image as PILImage

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
DEFAULT_MAX_IMAGE_SIDE = 20_000
DEFAULT_MAX_IMAGE_FRAMES = 1_000

MIME = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "tiff": "image/tiff",
    "webp": "image/webp",
}
KINDS = tuple(MIME)


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_side: int = DEFAULT_MAX_IMAGE_SIDE
    max_frames: int = DEFAULT_MAX_IMAGE_FRAMES


def kind_of(data: bytes) -> str | None:
    """The image type its first bytes declare, or ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def check_size(width: int, height: int, limits: ImageLimits, what: str = "the image") -> None:
    if width <= 0 or height <= 0:
        raise ParseError(f"{what} declares an empty size ({width} x {height})")
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ParseError(
            f"{what} is {width} x {height} pixels, over the limit of {limits.max_pixels} "
            f"pixels and {limits.max_side} per side: refused as a possible decompression bomb"
        )


def open_first_frame(data: bytes, limits: ImageLimits) -> PILImage.Image:
    """The first frame, decoded and converted to RGB, after the header checks."""
    from PIL import Image, UnidentifiedImageError

    kind = kind_of(data)
    if kind is None:
        raise ParseError("the file is not a supported image type")
    # Pillow warns above MAX_IMAGE_PIXELS and raises at twice that; both become refusals.
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            check_size(img.width, img.height, limits)
            frames = gif_frames(data, limits.max_frames + 1) if kind == "gif" else _frames(img)
            if frames > limits.max_frames:
                raise ParseError(
                    f"the image has {'more than ' if kind == 'gif' else ''}"
                    f"{limits.max_frames if kind == 'gif' else frames} frames, over the "
                    f"{limits.max_frames}-frame limit: refused as a possible bomb"
                )
            img.seek(0)
            img.load()
            return _rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ParseError(
            f"the image is over the {limits.max_pixels}-pixel limit: refused as a possible "
            "decompression bomb"
        ) from None
    except ParseError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ParseError(f"the {kind.upper()} image is corrupt or truncated") from None
    except (MemoryError, struct.error, IndexError, KeyError, TypeError):
        raise ParseError(f"the {kind.upper()} image is corrupt") from None


def _frames(img: PILImage.Image) -> int:
    # PNG (APNG acTL), WebP and TIFF report their frame count from headers/IFDs.
    return int(getattr(img, "n_frames", 1) or 1)


def _rgb(img: PILImage.Image) -> PILImage.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become white, as a page behind the text would be.
        from PIL import Image

        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def gif_frames(data: bytes, stop_after: int) -> int:
    """Count a GIF's image descriptors by walking its blocks (no LZW decoding); stop
    counting at ``stop_after``. Linear in the file size."""
    n = len(data)
    if n < 13:
        return 0
    pos = 13
    flags = data[10]
    if flags & 0x80:  # global colour table
        pos += 3 * (2 << (flags & 7))
    frames = 0
    while pos < n and frames < stop_after:
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor, optional local colour table, LZW data
            frames += 1
            if pos + 10 > n:
                break
            local = data[pos + 9]
            pos += 10
            if local & 0x80:
                pos += 3 * (2 << (local & 7))
            pos = _skip_sub_blocks(data, pos + 1)  # +1: LZW minimum code size
        else:
            break  # garbage: what was counted so far stands
    return frames


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    n = len(data)
    while pos < n:
        size = data[pos]
        pos += 1 + size
        if size == 0:
            break
    return pos


def read_image(data: bytes, limits: ImageLimits) -> list[tuple[str, Location]]:
    """The text in an image, as one unit located as image text."""
    from workers.ingestion import ocr

    text = ocr.image_text(open_first_frame(data, limits))
    return [(text, Location(region=IMAGE_TEXT))] if text.strip() else []
