"""The error classes are the one list of codes: wire code, HTTP status, problem title."""

from __future__ import annotations

import typing

import pytest

from bus.errors import BY_CODE, MeshError, RetryableError, from_body
from gateway_bridge.problems import problem_body
from schemas.errors import ErrorCode


def test_the_contract_literal_and_the_classes_name_the_same_codes() -> None:
    assert set(typing.get_args(ErrorCode)) == set(BY_CODE)


def test_each_class_has_its_own_title() -> None:
    assert all(code == cls.code for code, cls in BY_CODE.items())
    assert len({cls.title for cls in BY_CODE.values()}) == len(BY_CODE)
    assert MeshError.title == BY_CODE["internal"].title


def test_statuses_are_those_of_the_contract() -> None:
    assert {code: cls.status for code, cls in BY_CODE.items()} == {
        "invalid_request": 400,
        "unauthenticated": 401,
        "forbidden": 403,
        "not_found": 404,
        "conflict": 409,
        "payload_too_large": 413,
        "rate_limited": 429,
        "internal": 500,
        "upstream_error": 502,
        "unavailable": 503,
        "timeout": 504,
    }


def test_only_unavailable_and_timeout_are_retryable() -> None:
    retryable = {code for code, cls in BY_CODE.items() if issubclass(cls, RetryableError)}
    assert retryable == {"unavailable", "timeout"}


@pytest.mark.parametrize("code", sorted(BY_CODE))
def test_a_wire_body_rebuilds_the_class_and_its_problem(code: str) -> None:
    error = from_body({"code": code, "message": "m", "details": {"x": 1}})
    assert type(error) is BY_CODE[code]
    problem = problem_body(error)
    assert (problem["status"], problem["title"], problem["code"]) == (
        error.status,
        error.title,
        code,
    )
