"""Grounded answers: the prompt from retrieved passages, and citations with quoted spans.

Passages are numbered ``[1]..[n]`` in the prompt and the model is asked to cite them so.
Citations are the passages the answer cites by number; a model that cites nothing (small
local models rarely do) gets the passages whose sentences share the most words with the
answer, and at least the best-ranked passage. Each citation quotes a verbatim span of
its chunk: the sentence(s) sharing the most words with the answer and the question.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from workers.rag.chunking import count_tokens

SYSTEM_PROMPT = (
    "You answer questions using only the numbered passages you are given. "
    "Cite the passages you use like [1] or [2]. If the passages do not contain the "
    "answer, say that you do not know."
)
NO_RESULTS_ANSWER = "I could not find anything about that in the selected collections."
MAX_QUOTE_CHARS = 400
#: Share of the answer's content words a passage must contain to be cited without a marker.
MIN_OVERLAP_SHARE = 0.3

_WORD = re.compile(r"[A-Za-z0-9\u00C0-\u024F]+")
_MARKER = re.compile(r"\[(\d{1,3})\]")
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)", re.MULTILINE)
_STOP = frozenset(
    "a an and are as at be been but by can could did do does for from had has have how i if"
    " in into is it its may might more most must no not of on or our shall should so such"
    " than that the their them then there these they this those to too was we were what"
    " when where which who whom why will with would you your".split()
)


@dataclass(frozen=True)
class Passage:
    number: int
    chunk_id: str
    document_id: str
    source_id: str
    title: str | None
    text: str
    where: str | None = None
    """The chunk's location label ("page 3", "sheet 'Sales' row 4"), shown to the model."""


def words(text: str) -> set[str]:
    return {w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP and len(w) > 1}


def fit_passages(passages: list[Passage], budget_tokens: int) -> list[Passage]:
    """Best-first passages within the budget (approximate tokens); the first always fits,
    truncated if it must be."""
    kept: list[Passage] = []
    used = 0
    for p in passages:
        cost = count_tokens(p.text) + 8
        if used + cost > budget_tokens:
            if not kept:
                cut = p.text[: max(200, budget_tokens * 4)]
                kept.append(dataclasses.replace(p, text=cut))
            break
        kept.append(p)
        used += cost
    return kept


def render_passage(p: Passage) -> str:
    head = f"[{p.number}]" + (f" {p.title}" if p.title else f" ({p.source_id})")
    if p.where:
        head += f", {p.where}"
    return f"{head}\n{p.text}"


def local_messages(question: str, passages: list[Passage]) -> list[dict[str, str]]:
    body = "\n\n".join(render_passage(p) for p in passages)
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Passages:\n\n{body}\n\nQuestion: {question}"},
    ]


def best_quote(text: str, target: set[str]) -> str:
    """The verbatim sentence (with its neighbour when that adds words) of ``text`` sharing
    the most words with ``target``; the text's start when nothing overlaps."""
    spans = [(m.start(), m.end()) for m in _SENTENCE.finditer(text) if m.group().strip()]
    if not spans:
        return text[:MAX_QUOTE_CHARS].strip()
    scores = [len(words(text[a:b]) & target) for a, b in spans]
    best = max(range(len(spans)), key=lambda i: (scores[i], -i))
    start, end = spans[best]
    if best + 1 < len(spans) and scores[best + 1] > 0 and spans[best + 1][1] - start <= 300:
        end = spans[best + 1][1]
    quote = text[start:end].strip()
    return quote[:MAX_QUOTE_CHARS]


def cited_passages(answer: str, passages: list[Passage]) -> list[Passage]:
    by_number = {p.number: p for p in passages}
    cited: list[Passage] = []
    for m in _MARKER.finditer(answer):
        p = by_number.get(int(m.group(1)))
        if p is not None and p not in cited:
            cited.append(p)
    if cited:
        return cited
    answer_words = words(answer)
    if answer_words:
        for p in passages:
            share = len(answer_words & words(p.text)) / len(answer_words)
            if share >= MIN_OVERLAP_SHARE:
                cited.append(p)
    return cited or passages[:1]
