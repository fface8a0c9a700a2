"""The OpenAPI document, the offline docs page, and schemathesis against the live bridge."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import hypothesis
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase

from gateway_bridge.app import create_app
from gateway_bridge.routes import ROUTES
from mesh.registry import WORKERS
from mesh.runner import serving as mesh_serving
from schemas.gateway import DEFAULT_CHAT_MODEL, DEFAULT_EMBED_MODEL
from schemas.ingestion import UPLOAD_PATH
from tests.bridge_support import auth, bridge_settings, hs_token, http, serving
from tests.gateway_support import serve_gateway
from tests.openai_mock import MockOpenAI
from workers.gateway.config import load_config

pytestmark = pytest.mark.usefixtures("cache_worker")

#: What uvicorn answers, before any application code, to a request that is not valid HTTP.
_UVICORN_REJECTED = "Invalid HTTP request received."

#: Examples per operation and mode: bounded so the whole run stays around a minute.
MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def provider() -> Iterator[MockOpenAI]:
    server = MockOpenAI()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def bridge(settings, env, cache_worker, provider, tmp_path_factory):
    # Every service behind the route table answers, so a 5xx is a real server error. The
    # default chat alias goes to a scripted OpenAI-compatible server (fast, deterministic);
    # embeddings stay on the local model.
    models = tmp_path_factory.mktemp("fuzz-models") / "models.yaml"
    models.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": DEFAULT_CHAT_MODEL,
                        "litellm_params": {
                            "model": "openai/m-fuzz",
                            "api_base": provider.url,
                            "api_key": "test",
                        },
                    },
                    {
                        "model_name": DEFAULT_EMBED_MODEL,
                        "litellm_params": {"model": "local/minilm-l6-v2"},
                    },
                ]
            }
        )
    )
    others = [name for name in WORKERS if name not in ("cache", "gateway")]
    async with (
        serve_gateway(load_config(str(models)), env),
        mesh_serving(others, env),
        serving(create_app(bridge_settings(settings))) as url,
    ):
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
    for method, path in OWN_ROUTES:
        op = spec["paths"][path][method.lower()]
        assert {"200", "202"} & set(op["responses"]) and "401" in op["responses"]
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["responses"]["429"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OpenAIError"
    }
    upload = spec["paths"][UPLOAD_PATH]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"] == {"$ref": "#/components/schemas/UploadForm"}
    assert spec["components"]["schemas"]["UploadForm"]["required"] == ["collection_id", "file"]
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


#: The routes the bridge serves itself (not from the route table), fuzzed on their own.
OWN_ROUTES = {
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("POST", UPLOAD_PATH),
}


def _run_schemathesis(base_url: str, token: str, *, own: bool = False) -> tuple[int, list[str]]:
    """Generate requests for the route table's operations (or, with ``own``, for the
    routes the bridge serves itself); collect every check failure."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    headers = auth(token)
    # Valid requests get a generous deadline: a generated short X-Request-Timeout makes a
    # real model call answer 504, which is the contract, not a server fault.
    positive = {**headers, "X-Request-Timeout": "120"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if ((operation.method.upper(), operation.path) in OWN_ROUTES) != own:
            continue
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
                # What the issue asks: no 5xx and no response outside the schema (status
                # codes, content types, headers, bodies). Not "positive data acceptance" (a
                # schema cannot say everything a service checks: a NUL character Postgres
                # cannot store, a name that must exist) nor "negative data rejection" (some
                # inputs are documented as capped or passed through, not refused).
                response = case.call(headers=sent, timeout=30)  # noqa: B023 - run below
                if response.status_code == 400 and response.text == _UVICORN_REJECTED:
                    return  # malformed HTTP (e.g. a generated Content-Length): never reached us
                case.validate_response(
                    response,
                    headers=sent,  # noqa: B023
                    excluded_checks=[
                        schemathesis.checks.positive_data_acceptance,
                        schemathesis.checks.negative_data_rejection,
                    ],
                )

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                # An operation without parameters or body has no invalid input to generate.
                assert mode is schemathesis.GenerationMode.NEGATIVE
            except Exception as exc:  # collect, so one run reports every operation
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return operations, failures


@pytest.mark.timeout(600)  # ~70 operations x 2 modes; slow on a loaded 2-core machine
async def test_schemathesis_finds_no_server_error_or_schema_violation(bridge):
    token = hs_token(tenant="fuzz", user="schemathesis")
    operations, failures = await asyncio.to_thread(_run_schemathesis, bridge, token)
    assert operations == len(ROUTES) + 2  # the routes, /healthz and /readyz
    assert not failures, "\n\n".join(failures)


@pytest.mark.timeout(600)
async def test_schemathesis_covers_the_openai_and_upload_routes(bridge):
    token = hs_token(tenant="fuzz-own", user="schemathesis")
    operations, failures = await asyncio.to_thread(_run_schemathesis, bridge, token, own=True)
    assert operations == len(OWN_ROUTES)
    assert not failures, "\n\n".join(failures)
