"""bus.context's fast constructors build exactly what pydantic's own would."""

from __future__ import annotations

import random
import re

from bus.context import child, new_context, new_id, trusted
from schemas.context import Context

VALUES = {
    "tenant": "acme",
    "user": "alice",
    "roles": ("admin",),
    "correlation_id": "c-1",
    "request_id": "r-1",
    "deadline": 1_900_000_000_000,
    "traceparent": None,
}


def test_trusted_context_is_what_model_construct_builds():
    fast, slow = trusted(**VALUES), Context.model_construct(**VALUES)
    assert fast == slow
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.headers() == slow.headers()
    assert fast.model_dump() == slow.model_dump()


def test_child_is_what_model_copy_builds_with_a_new_request_id():
    ctx = new_context("acme", user="alice", roles=["admin"], correlation_id="c-1")
    out = child(ctx)
    expected = ctx.model_copy(
        update={"request_id": out.request_id, "traceparent": None, "tracestate": None}
    )
    assert out.request_id != ctx.request_id
    assert out == expected.model_copy(update={"stream": None})
    assert out.model_fields_set == ctx.model_fields_set | {
        "request_id",
        "deadline",
        "traceparent",
        "tracestate",
        "stream",
    }
    assert Context.model_validate(out.headers()) == out  # still a valid context


def test_new_ids_are_32_hex_digits_and_distinct():
    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_seeding_the_global_random_does_not_repeat_ids():
    random.seed(0)
    first = new_id()
    random.seed(0)
    assert new_id() != first
