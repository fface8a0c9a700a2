"""Citations: the passages a run retrieved, stored per step and reported per run.

A step that retrieves — the run's auto retrieval (``runs/retrieval.py``), an ``ok`` call of
a tool built on ``rag_search``, a cached answer's — stores its passages in
``agent.steps.citations`` in the form :func:`stored` makes. A run's citations
(:func:`of_run`) are those, in step order, one per distinct chunk, numbered from 1: the
auto retrieval is always step 0, so its passages keep the numbers ``[n]`` the model saw in
the system message. ``cited`` says whether the output names a passage (``[n]``, its
document id or its source id), as OpenAI's file-search annotations mark only what the
text cites while Dify's ``retriever_resources`` list everything retrieved; both are here.

Nothing is trusted from storage or the cache: a malformed entry is skipped, every quote
is cut to :data:`~schemas.agent.MAX_QUOTE_CHARS`, and a run reports at most
:data:`MAX_CITATIONS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from pydantic import ValidationError

from schemas.agent import MAX_QUOTE_CHARS, RunCitation

#: Most citations one run reports (and one cached answer carries).
MAX_CITATIONS = 100
_FIELDS = ("collection_id", "document_id", "chunk_id", "source_id", "title", "location")


class CitingStep(Protocol):
    """What :func:`of_run` reads of a step: a stored row (``StepRow``)."""

    @property
    def idx(self) -> int: ...
    @property
    def citations(self) -> Any: ...


def quote(text: str) -> str:
    """The start of a passage, whitespace collapsed, at most ``MAX_QUOTE_CHARS``."""
    flat = " ".join(str(text)[: MAX_QUOTE_CHARS * 4].split())
    return flat if len(flat) <= MAX_QUOTE_CHARS else flat[: MAX_QUOTE_CHARS - 1] + "…"


def stored(items: Iterable[Any]) -> list[dict[str, Any]]:
    """Search results (``rag.search`` items or their dicts) in their stored form."""
    out: list[dict[str, Any]] = []
    for item in items:
        data = item.model_dump(mode="json") if hasattr(item, "model_dump") else item
        if not isinstance(data, Mapping):
            continue
        document_id, chunk_id = data.get("document_id"), data.get("chunk_id")
        if not (isinstance(document_id, str) and isinstance(chunk_id, str)):
            continue
        entry = {k: data.get(k) for k in _FIELDS}
        score = data.get("score")
        entry["score"] = round(float(score), 4) if isinstance(score, int | float) else None
        text = data.get("text", data.get("quote"))
        entry["quote"] = quote(text) if isinstance(text, str) else ""
        out.append(entry)
        if len(out) >= MAX_CITATIONS:
            break
    return out


def distinct(steps: Iterable[CitingStep]) -> list[tuple[int, dict[str, Any]]]:
    """(step index, stored passage) of each distinct chunk, in step order."""
    seen: set[str] = set()
    out: list[tuple[int, dict[str, Any]]] = []
    for step in steps:
        entries = step.citations if isinstance(step.citations, list) else []
        for entry in entries:
            if not isinstance(entry, Mapping):
                continue
            chunk = entry.get("chunk_id")
            if not isinstance(chunk, str) or chunk in seen:
                continue
            seen.add(chunk)
            out.append((step.idx, dict(entry)))
            if len(out) >= MAX_CITATIONS:
                return out
    return out


def of_run(steps: Sequence[CitingStep], output: str | None) -> list[RunCitation]:
    """The run's citations: every distinct passage its steps retrieved, numbered from 1."""
    text = output or ""
    out: list[RunCitation] = []
    for n, (step, entry) in enumerate(distinct(steps), 1):
        try:
            citation = RunCitation.model_validate(
                {
                    **{k: entry.get(k) for k in _FIELDS},
                    "score": entry.get("score"),
                    "quote": quote(str(entry.get("quote") or "")),
                    "index": n,
                    "step": step,
                }
            )
        except ValidationError:  # a malformed stored entry is left out, never a failure
            continue
        source = citation.source_id or ""
        citation.cited = bool(text) and (
            f"[{n}]" in text
            or citation.document_id in text
            or (len(source) >= 3 and source in text)
        )
        out.append(citation)
    return out
