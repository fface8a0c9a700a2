"""The one error a parser raises."""

from __future__ import annotations

from bus.errors import InvalidRequest


class ParseError(InvalidRequest):
    """The file cannot be ingested; the message says why, for the user. The job ends
    ``failed`` with it and is not retried."""
