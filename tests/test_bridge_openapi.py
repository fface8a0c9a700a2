"""The OpenAPI document, the offline docs page, and schemathesis against the live bridge."""

from __future__ import annotations

import asyncio
import re

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase

from gateway_bridge.app import create_app
from gateway_bridge.routes import ROUTES
from mesh.registry import WORKERS
from mesh.runner import serving as mesh_serving
from tests.bridge_support import auth, bridge_settings, hs_token, http, serving

pytestmark = pytest.mark.usefixtures("cache_worker")

#: Examples per operation and mode: bounded so the whole run stays well under a minute.
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
async def bridge(settings, env, cache_worker):
    # Every service behind the route table answers, so a 5xx is a real server error.
    others = [name for name in WORKERS if name != "cache"]
    async with mesh_serving(others, env), serving(create_app(bridge_settings(settings))) as url:
        yield url


async def test_openapi_is_3_1_with_every_route_and_bearer_security(bridge):
    async with http(bridge) as c:
        spec = (await c.get("/openapi.json")).json()
    assert spec["openapi"] == "3.1.0"
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearerAuth": []}]
    for route in ROUTES:
        op = spec["paths"][route.path][route.method.lower()]
        assert op["responses"]["401"] == {"$ref": "#/components/responses/Unauthenticated"}
        assert op["responses"]["429"] == {"$ref": "#/components/responses/RateLimited"}
        assert "default" in op["responses"]
    problem = spec["components"]["responses"]["Problem"]["content"]["application/problem+json"]
    assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert "CacheSetRequest" in spec["components"]["schemas"]


async def test_docs_page_is_self_contained(bridge):
    async with http(bridge) as c:
        r = await c.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # No CDN: no script, stylesheet or image from anywhere but this page.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text)
    assert "<script src" not in r.text and "<link" not in r.text
    assert 'SPEC_URL = "openapi.json"' in r.text


def _run_schemathesis(base_url: str, token: str) -> tuple[int, list[str]]:
    """Generate requests for every operation; collect every check failure."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = auth(token)
    # Valid requests get a generous deadline: a generated short X-Request-Timeout makes a
    # real model call answer 504, which is the contract, not a server fault.
    positive = {**headers, "X-Request-Timeout": "120"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in schemathesis.GenerationMode:
            sent = positive if mode is schemathesis.GenerationMode.POSITIVE else headers

            @hypothesis.settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                # Not "positive data acceptance": a schema cannot say everything a service
                # checks (a NUL character Postgres cannot store, a name that must exist),
                # and a clear 4xx for those is the contract. Everything else applies:
                # no 5xx, status codes, content types, headers, response schemas.
                case.call_and_validate(
                    headers=sent,  # noqa: B023 - called right below, in this iteration
                    timeout=30,
                    excluded_checks=[schemathesis.checks.positive_data_acceptance],
                )

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                # An operation without parameters or body has no invalid input to generate.
                assert mode is schemathesis.GenerationMode.NEGATIVE
            except Exception as exc:  # collect, so one run reports every operation
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return operations, failures


async def test_schemathesis_finds_no_server_error_or_schema_violation(bridge):
    token = hs_token(tenant="fuzz", user="schemathesis")
    operations, failures = await asyncio.to_thread(_run_schemathesis, bridge, token)
    assert operations == len(ROUTES) + 2  # the routes, /healthz and /readyz
    assert not failures, "\n\n".join(failures)
