"""Inputs built to make parsers, chunkers and renderers do super-linear work (issue 10,
items 1-3): each must finish in linear time. Each runs in a bus.offload process with a
budget of seconds; the patterns they replace needed hours for the same input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bus import offload
from workers.ingestion.parsing import Limits as ParseLimits
from workers.ingestion.parsing import _tidy, parse
from workers.prompt.sandbox import Budget, Limits, PromptSandbox, RenderLimitExceeded, run_bounded
from workers.rag.chunking import chunk_text, sections

#: Far above what the linear code needs (milliseconds), far below the old cost (hours).
BUDGET_S = 20.0


async def _bounded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await offload.run(fn, *args, budget=BUDGET_S, pool="hostile-tests", **kwargs)


@pytest.fixture(scope="module", autouse=True)
async def _stop_pool() -> Any:
    yield
    await offload.get_pool("hostile-tests").close()


async def test_item1_markdown_heading_with_a_long_space_run_chunks_in_linear_time() -> None:
    hostile = "# a" + " " * 200_000 + "b\n\nbody text"
    pieces = await _bounded(chunk_text, hostile)
    assert pieces and pieces[-1].text == "body text"
    assert pieces[-1].section is not None and pieces[-1].section.startswith("a")


def test_headings_keep_their_meaning() -> None:
    text = "# Title #\n\nintro\n\n## C#\n\ncode\n\n### Closed ###   \n\nx\n\n####### seven\n"
    found = sections(text)
    assert [s for s, _ in found] == ["Title", "Title > C#", "Title > C# > Closed"]
    assert found[-1][1] == ["x", "####### seven"]  # seven '#' is not a heading
    assert sections("#\n\nnot a heading")[0][0] is None


async def test_item2_tidy_of_a_long_space_run_without_newline_is_linear() -> None:
    hostile = "x" + " " * 2_000_000 + "y\n" + "\t" * 1_000_000
    assert await _bounded(_tidy, hostile) == "x" + " " * 2_000_000 + "y"


async def test_item2_a_whole_upload_of_spaces_parses_in_linear_time() -> None:
    data = b"word" + b" " * 5_000_000 + b"end"
    parsed = await _bounded(parse, data, ParseLimits(max_bytes=10_000_000), filename="a.txt")
    assert parsed.text.startswith("word") and parsed.text.endswith("end")


def _render(source: str, variables: dict[str, Any]) -> str:
    env = PromptSandbox()
    return run_bounded(Budget(Limits()), lambda: env.from_string(source).render(variables))  # type: ignore[no-any-return]


async def test_item3_printf_check_of_many_open_keys_is_linear() -> None:
    with pytest.raises(TypeError, match="format requires a mapping"):
        await _bounded(_render, "{{ t % 1 }}", {"t": "%(" * 400_000})


async def test_item3_printf_output_size_is_checked_before_it_is_built() -> None:
    with pytest.raises(RenderLimitExceeded, match="output limit"):
        await _bounded(_render, "{{ ('%(a)s' * 2000) % {'a': x} }}", {"x": "y" * 1000})
    with pytest.raises(RenderLimitExceeded, match="output limit"):
        await _bounded(_render, "{{ ('%s' * 3) | format(x, x, x) }}", {"x": "y" * 400_000})


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ '%5d|%-3s|' % (1, 'ab') }}", "    1|ab |"),
        ("{{ '%(a)s-%(b)05d %%' % {'a': 'x', 'b': 7} }}", "x-00007 %"),
        ("{{ '%s and %s'|format('p', 'q') }}", "p and q"),
        ("{{ '%(a)s'|format(a='q') }}", "q"),
    ],
)
def test_printf_formatting_still_works(source: str, expected: str) -> None:
    assert _render(source, {}) == expected


async def test_chunks_stay_small_whatever_the_words() -> None:
    text = "start " + "w" * 3_000_000 + " middle" + " " * 2_000_000 + "end"
    pieces = await _bounded(chunk_text, text)
    assert max(len(p.text) for p in pieces) <= 200 * 40
    assert pieces[0].text.startswith("start") and pieces[-1].text.endswith("end")
