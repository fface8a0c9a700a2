"""Audio (WAV, MP3, M4A, OGG, FLAC): the type from the magic bytes here; the words come
from the gateway's ``gateway.transcribe`` (litellm's transcription API, e.g. Whisper),
because no offline speech model ships inside a PyPI package the project could use.
Transcript segments become units located by their start and end time.
"""

from __future__ import annotations

import io
import wave

from schemas.locations import Location
from workers.ingestion.errors import ParseError

MIME = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
}
KINDS = tuple(MIME)
#: The ISO base media brands of audio-only MP4 files (and the generic ones they use).
_M4A_BRANDS = (b"M4A ", b"M4B ", b"mp42", b"isom", b"mp41", b"dash")


def kind_of(data: bytes) -> str | None:
    """The audio type its first bytes declare, or ``None``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data.startswith(b"ID3") or (
        len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06 != 0
    ):
        return "mp3"
    if data[4:8] == b"ftyp" and data[8:12] in _M4A_BRANDS:
        return "m4a"
    if data.startswith(b"OggS"):
        return "ogg"
    if data.startswith(b"fLaC"):
        return "flac"
    return None


def wav_seconds(data: bytes) -> float | None:
    """A WAV file's duration from its header, ``None`` if the header is unreadable."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate = w.getframerate()
            return w.getnframes() / rate if rate > 0 else None
    except (wave.Error, EOFError, ValueError, OSError):
        return None


def check_duration(kind: str, data: bytes, max_seconds: float) -> float | None:
    """Refuse a WAV longer than ``max_seconds`` (other types: the provider's limits)."""
    if kind != "wav":
        return None
    seconds = wav_seconds(data)
    if seconds is None:
        raise ParseError("the WAV file is corrupt (unreadable header)")
    if seconds > max_seconds:
        raise ParseError(
            f"the recording lasts {seconds:.0f} s, over the {max_seconds:.0f}-second limit"
        )
    return seconds


def transcript_units(
    segments: list[tuple[float, float, str]], text: str
) -> list[tuple[str, Location]]:
    """One unit per segment with its time span; the whole text, unlocated, when the
    provider gave no segments."""
    units = [
        (t.strip(), Location(start_seconds=max(0.0, start), end_seconds=max(start, end)))
        for start, end, t in segments
        if t.strip()
    ]
    if not units and text.strip():
        units = [(text.strip(), Location(start_seconds=0.0))]
    return units
