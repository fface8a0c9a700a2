"""Which files `mesh ingest` takes from the paths it is given, and their source ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.ingest import FileResult, exit_code, find_files


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in ("a.md", "sub/b.txt", "sub/deep/c.md", ".git/config", "sub/.cache.md", "x.log"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    return tmp_path


def ids(found) -> list[str]:
    return [f.source_id for f in found]


def test_a_folder_is_walked_recursively_without_hidden_files(tree):
    assert ids(find_files([str(tree)])) == ["a.md", "x.log", "sub/b.txt", "sub/deep/c.md"]


def test_include_and_exclude_globs_match_the_relative_path_or_the_name(tree):
    assert ids(find_files([str(tree)], include=["*.md"])) == [
        "a.md",
        "sub/.cache.md",  # an include names hidden files explicitly
        "sub/deep/c.md",
    ]
    assert ids(find_files([str(tree)], exclude=["*.log", "sub/deep/*"])) == ["a.md", "sub/b.txt"]


def test_a_file_given_directly_is_named_by_its_file_name(tree):
    assert ids(find_files([str(tree / "sub/deep/c.md")])) == ["c.md"]


def test_two_files_with_one_source_id_are_refused_before_anything_is_sent(tree):
    (tree / "other").mkdir()
    (tree / "other/c.md").write_text("another c")
    with pytest.raises(SystemExit, match="would both be 'c.md'"):
        find_files([str(tree / "sub/deep/c.md"), str(tree / "other")])


def test_one_file_reached_twice_is_taken_once(tree):
    assert ids(find_files([str(tree / "sub/deep/c.md"), str(tree / "sub/deep")])) == ["c.md"]


def test_a_missing_path_is_an_error(tree):
    with pytest.raises(SystemExit, match="no such file or folder"):
        find_files([str(tree / "nope")])


def test_exit_code_is_1_for_a_failure_or_an_unfinished_job():
    ok = FileResult("a", "a", 1, status="indexed")
    same = FileResult("b", "b", 1, status="unchanged")
    assert exit_code([ok, same]) == 0
    assert exit_code([ok, FileResult("c", "c", 1, status="failed", reason="x")]) == 1
    assert exit_code([ok, FileResult("d", "d", 1, status="embedding")]) == 1
    assert exit_code([FileResult("d", "d", 1, status="queued")], followed=False) == 0
