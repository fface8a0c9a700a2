"""The edge's route table picks what Starlette's router would, with the same parameters."""

from __future__ import annotations

import pytest
from starlette.routing import Match

from gateway_bridge.app import Bridge
from gateway_bridge.routing import RouteTable
from gateway_bridge.settings import BridgeSettings
from tests.bridge_support import ALL_ROUTES, SECRET

ENDPOINTS = Bridge(BridgeSettings(jwt_secret=SECRET), ALL_ROUTES).route_endpoints()
TABLE = RouteTable(ENDPOINTS)


def _scope(method: str, path: str, root_path: str = "") -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": root_path}


def _starlette(scope: dict) -> tuple[str, dict] | None:
    """Starlette's Router: the first route that fully matches, in order."""
    for route in ENDPOINTS:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return route.path, child["path_params"]
    return None


CASES = [
    ("POST", "/api/v1/cache/get", ("/api/v1/cache/get", {})),
    ("POST", "/api/v1/prompts/context", ("/api/v1/prompts/context", {})),
    # Only POST is fixed at this path: GET goes to the template declared after it.
    ("GET", "/api/v1/prompts/context", ("/api/v1/prompts/{name}", {"name": "context"})),
    ("HEAD", "/api/v1/prompts/p1", ("/api/v1/prompts/{name}", {"name": "p1"})),
    (
        "PUT",
        "/api/v1/prompts/p1/labels/prod",
        ("/api/v1/prompts/{name}/labels/{label}", {"name": "p1", "label": "prod"}),
    ),
    ("GET", "/api/v1/cache/get", None),  # wrong method: Starlette answers 405
    ("OPTIONS", "/api/v1/prompts/p1", None),
    ("GET", "/api/v1/prompts/a/b/c/d", None),  # no such path: 404
    ("GET", "/healthz", None),  # an operations endpoint: not the table's
    ("POST", "/api/v1/cache/get/", None),  # no slash redirects
]


@pytest.mark.parametrize(("method", "path", "expected"), CASES)
def test_route_table_matches_like_starlette(method, path, expected):
    scope = _scope(method, path)
    found = TABLE.match(scope)
    assert (None if found is None else (found[0].path, found[1])) == expected
    assert _starlette(scope) == expected


def test_route_table_honours_a_root_path():
    scope = _scope("POST", "/gw/api/v1/cache/get", root_path="/gw")
    found = TABLE.match(scope)
    assert found is not None and found[0].path == "/api/v1/cache/get"


def test_fixed_path_parameters_are_not_shared_between_requests():
    first = TABLE.match(_scope("GET", "/api/v1/prompts/context"))
    assert first is not None
    first[1]["tampered"] = True
    again = TABLE.match(_scope("GET", "/api/v1/prompts/context"))
    assert again is not None and again[1] == {"name": "context"}
