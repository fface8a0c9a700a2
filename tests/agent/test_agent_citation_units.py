"""Citations and the collections auto retrieval may search, without infrastructure
(docs/services/agent.md, "Retrieval and citations")."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from schemas.agent import MAX_QUOTE_CHARS
from schemas.rag import SearchResult
from workers.agent import citations, tools
from workers.agent.runs.retrieval import HEADER, NOTHING_FOUND, block


@dataclass
class Step:
    idx: int
    citations: Any


def _passage(chunk: str, doc: str = "doc-1", **extra: Any) -> dict[str, Any]:
    return {"document_id": doc, "chunk_id": chunk, "text": f"text of {chunk}", **extra}


def test_a_run_cites_each_chunk_once_numbered_in_step_order():
    steps = [
        Step(0, citations.stored([_passage("c1"), _passage("c2", "doc-2")])),
        Step(1, None),
        Step(2, citations.stored([_passage("c2", "doc-2"), _passage("c3", "doc-3")])),
    ]
    out = citations.of_run(steps, "The answer [2], see doc-3.")
    assert [(c.index, c.chunk_id, c.step, c.cited) for c in out] == [
        (1, "c1", 0, False),
        (2, "c2", 0, True),
        (3, "c3", 2, True),
    ]


def test_malformed_stored_entries_are_skipped_without_renumbering_the_others():
    steps = [
        Step(0, [{"chunk_id": "c1"}, "junk", _passage("c2"), {"document_id": 5, "chunk_id": "x"}]),
        Step(1, {"not": "a list"}),
    ]
    stored = citations.stored(steps[0].citations)
    assert [e["chunk_id"] for e in stored] == ["c2"]
    # A stored entry that is not a citation is left out; the next keeps its number [2],
    # the one the model saw.
    bad = {**_passage("c1"), "quote": "q", "location": "page three"}
    out = citations.of_run([Step(0, [bad, _passage("c2")])], "see [2]")
    assert [(c.index, c.chunk_id, c.cited) for c in out] == [(2, "c2", True)]


def test_quotes_are_bounded_and_whitespace_collapsed():
    (entry,) = citations.stored([_passage("c1", text="a\n\n b " * 400)])
    assert len(entry["quote"]) <= MAX_QUOTE_CHARS and "\n" not in entry["quote"]
    (c,) = citations.of_run([Step(0, [{**entry, "quote": "x" * 5000}])], None)
    assert len(c.quote) <= MAX_QUOTE_CHARS


def test_a_run_reports_at_most_max_citations():
    many = [_passage(f"c{i}") for i in range(citations.MAX_CITATIONS + 50)]
    steps = [Step(0, many[:80]), Step(1, many[80:])]
    assert len(citations.of_run(steps, None)) == citations.MAX_CITATIONS


def test_search_results_are_stored_with_their_collection_title_and_location():
    r = SearchResult(
        document_id="d",
        source_id="handbook.pdf",
        chunk_id="c",
        score=0.123456,
        text="Vacation policy.",
        collection_id="col",
        title="Handbook",
        location={"page": 3},
    )
    (entry,) = citations.stored([r])
    assert entry["collection_id"] == "col" and entry["title"] == "Handbook"
    assert entry["score"] == 0.1235 and entry["location"]["page"] == 3
    (c,) = citations.of_run([Step(0, [entry])], "see handbook.pdf")
    assert c.cited and c.location is not None and c.location.page == 3


def _result(n: int, text: str) -> SearchResult:
    return SearchResult(
        document_id=f"d{n}", source_id=f"s{n}", chunk_id=f"c{n}", score=1.0, text=text
    )


def test_passages_are_numbered_and_cut_to_the_budget():
    results = [_result(1, "one " * 600), _result(2, "two"), _result(3, "three")]
    text, shown = block(results, budget=1100)
    assert text.startswith(HEADER) and "\n[1] s1: one one" in text
    assert len(text.splitlines()[1]) <= len("[1] s1: ") + 1000
    assert shown == results[:1]  # the second would pass the budget
    assert block([], 1000) == (NOTHING_FOUND, [])
    # The first passage is always shown, even alone over the budget.
    assert block(results, budget=10)[1] == results[:1]


def _rag_tool(name: str, fixed: list[str] | None, roles: tuple[str, ...] = ()) -> tools.ToolSpec:
    spec = tools.builtin_spec("rag_search")
    return replace(
        spec,
        name=name,
        builtin=False,
        fixed={"collection_ids": fixed} if fixed else {},
        required_roles=roles,
    )


def test_auto_retrieval_searches_what_the_users_tools_could_reach():
    gated = _rag_tool("payroll_search", ["pay"], ("hr:payroll",))
    box = tools.Toolbox(["payroll_search"], {"payroll_search": gated}, roles=())
    # "hr": no tool reaches it (granted for retrieval); "pay": only the gated tool does.
    assert box.searchable(["hr", "pay"]) == ["hr"]
    holder = tools.Toolbox(["payroll_search"], {"payroll_search": gated}, roles=("hr:payroll",))
    assert holder.searchable(["hr", "pay"]) == ["hr", "pay"]
    # The built-in reaches every granted collection, for everyone.
    both = tools.Toolbox(["rag_search", "payroll_search"], {"payroll_search": gated}, roles=())
    assert both.searchable(["hr", "pay"]) == ["hr", "pay"]
    # A gated tool fixing no collection reaches them all.
    wide = _rag_tool("docs_search", None, ("docs:read",))
    box = tools.Toolbox(["docs_search"], {"docs_search": wide}, roles=())
    assert box.searchable(["hr", "pay"]) == []


def test_a_collection_only_an_approval_gated_tool_reaches_is_not_searched_unasked():
    tool = replace(_rag_tool("legal_search", ["legal"]), requires_approval=True)
    box = tools.Toolbox(["legal_search"], {"legal_search": tool}, roles=())
    assert box.searchable(["hr", "legal"]) == ["hr"]
    box = tools.Toolbox(["rag_search"], {}, roles=(), approval_required=["rag_search"])
    assert box.searchable(["hr"]) == []
