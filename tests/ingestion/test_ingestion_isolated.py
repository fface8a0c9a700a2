"""Parsing runs in a killable process: results and parse errors come back, and work over
its time budget is killed with a reason."""

from __future__ import annotations

import os
import time

import pytest

from tests.media import image_bytes
from workers.ingestion import isolated
from workers.ingestion.errors import ParseError
from workers.ingestion.parsing import Limits, parse


def spin(pid_file: str) -> None:
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.01)


def refuse() -> None:
    raise ParseError("the image is a bomb")


async def test_the_result_comes_back_from_the_process():
    parsed = await isolated.run(
        parse, image_bytes(["Isolated reading"]), Limits(max_bytes=1 << 22), budget=120, what="x"
    )
    assert parsed.text == "Isolated reading" and parsed.spans[0].location.label == "image text"


async def test_a_parse_error_keeps_its_type_and_message():
    with pytest.raises(ParseError, match="the image is a bomb"):
        await isolated.run(refuse, budget=30, what="parsing")


async def test_work_over_its_budget_is_killed(tmp_path):
    pid_file = tmp_path / "pid"
    with pytest.raises(isolated.BudgetExceeded, match="parsing the document took longer than 1 s"):
        await isolated.run(spin, str(pid_file), budget=1, what="parsing the document")
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
