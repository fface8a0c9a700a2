"""Offline OCR: PP-OCRv4 text detection and recognition on onnxruntime, through
RapidOCR (PyPI ``rapidocr-onnxruntime``, whose wheel ships the three ONNX models, ~16 MB).

Nothing is downloaded at run time: the models are read from the installed package. The
package is installed with ``--no-deps`` (see the Makefile): it asks for the desktop
``opencv-python``; the project depends on ``opencv-python-headless`` instead, which
provides the same ``cv2`` module without the GUI libraries.

The engine is built once per process (~1 s) and used from that process only; callers run
it in a killable worker process, never on the event loop. onnxruntime uses one thread:
the parse pool gives parallelism across files.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image as PILImage

#: Images are scaled down to this longest side before OCR (RapidOCR's own default).
MAX_SIDE = 2000
#: Text detection runs on the image scaled so its longest side is this many pixels.
DETECTION_SIDE = 1280
#: Lines recognised with less confidence are dropped.
MIN_SCORE = 0.5

_engine: Any = None
_lock = threading.Lock()


@dataclass(frozen=True)
class Line:
    text: str
    left: float
    top: float
    right: float
    bottom: float
    score: float


def engine() -> Any:
    """The process's RapidOCR engine, built on first use from the packaged models."""
    global _engine
    with _lock:
        if _engine is None:
            from rapidocr_onnxruntime import RapidOCR

            _engine = RapidOCR(
                intra_op_num_threads=1,
                inter_op_num_threads=1,
                det_limit_type="max",
                det_limit_side_len=DETECTION_SIDE,
                max_side_len=MAX_SIDE,
                text_score=MIN_SCORE,
            )
        return _engine


def recognize(img: PILImage.Image) -> list[Line]:
    """Text lines of an RGB image, with their boxes, top to bottom."""
    import numpy as np

    if max(img.size) > MAX_SIDE:
        img = img.copy()
        img.thumbnail((MAX_SIDE, MAX_SIDE))
    if img.width < 8 or img.height < 8:
        return []
    bgr = np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])
    result, _ = engine()(bgr)
    lines = []
    for box, text, score in result or []:
        xs = [float(p[0]) for p in box]
        ys = [float(p[1]) for p in box]
        if str(text).strip():
            lines.append(Line(str(text).strip(), min(xs), min(ys), max(xs), max(ys), float(score)))
    return lines


def layout(lines: list[Line]) -> str:
    """Lines into reading order: boxes sharing a row joined left to right, a blank line
    where the gap to the next row is larger than a line's height (a new paragraph)."""
    if not lines:
        return ""
    rows: list[list[Line]] = []
    for line in sorted(lines, key=lambda ln: (ln.top, ln.left)):
        if rows:
            row = rows[-1]
            top = min(ln.top for ln in row)
            bottom = max(ln.bottom for ln in row)
            middle = (line.top + line.bottom) / 2
            if top <= middle <= bottom:
                row.append(line)
                continue
        rows.append([line])
    heights = sorted(ln.bottom - ln.top for ln in lines)
    height = max(1.0, heights[len(heights) // 2])
    out: list[str] = []
    previous_bottom: float | None = None
    for row in rows:
        top = min(ln.top for ln in row)
        if previous_bottom is not None and top - previous_bottom > height:
            out.append("")
        out.append(" ".join(ln.text for ln in sorted(row, key=lambda ln: ln.left)))
        previous_bottom = max(ln.bottom for ln in row)
    return "\n".join(out)


def image_text(img: PILImage.Image) -> str:
    return layout(recognize(img))
