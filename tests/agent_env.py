"""Fixtures of the Agent Service tests: the scripted services and an agent worker.

Import the fixtures into a test module (``from tests.agent_env import *``-style, by
name). They are module-scoped, so each module runs its own agent worker and its own
scripted services, and two modules never serve the same queue group at once.

The scripted services answer as ``fakegw``/``fakerag``/``fakeprompt`` rather than
``gateway``/``rag``/``prompt``: the real services may be served by other tests of the
same session, and the agent reaches whichever names its settings give
(``AGENT_GATEWAY_SERVICE``, ...), so the scripts never race a real worker.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from bus.client import Client
from bus.context import new_context
from bus.worker import WorkerEnv
from schemas.context import Context
from tests.fake_llm import FakeLLM
from workers.agent.netguard import SafeFetcher
from workers.agent.service import serving_parts
from workers.agent.settings import AgentConfig

FAKE_GATEWAY = "fakegw"
FAKE_RAG = "fakerag"
FAKE_PROMPT = "fakeprompt"
ADMIN_ROLES = ("agent:admin",)

#: Environment a `mesh worker agent` process needs to reach the scripted services.
AGENT_ENV = {
    "AGENT_GATEWAY_SERVICE": FAKE_GATEWAY,
    "AGENT_RAG_SERVICE": FAKE_RAG,
    "AGENT_PROMPT_SERVICE": FAKE_PROMPT,
}


def agent_config(**overrides: Any) -> AgentConfig:
    return AgentConfig(  # type: ignore[call-arg]
        gateway_service=FAKE_GATEWAY,
        rag_service=FAKE_RAG,
        prompt_service=FAKE_PROMPT,
        **overrides,
    )


class Web:
    """The outside world as ``http_get`` would see it, with no socket ever opened.

    ``dns`` answers name lookups; ``pages`` answers requests by (address, path). Both
    record what was asked, so a test can show a refused fetch never resolved or
    connected, and an allowed one connected to the checked address.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.dns: dict[str, list[str]] = {}
        self.pages: dict[tuple[str, str], httpx.Response] = {}
        self.lookups: list[str] = []
        self.sent: list[httpx.Request] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.dns:
            raise OSError(f"no such host {host}")
        return list(self.dns[host])

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        page = self.pages.get((request.url.host, request.url.path))
        return page if page is not None else httpx.Response(404, text="not found")

    def fetcher(self, **kwargs: Any) -> SafeFetcher:
        return SafeFetcher(
            resolver=self.resolve, transport=httpx.MockTransport(self.handle), **kwargs
        )


@pytest.fixture(scope="module")
async def fake_services(env: WorkerEnv) -> AsyncIterator[FakeLLM]:
    fake = FakeLLM(FAKE_GATEWAY, FAKE_RAG, FAKE_PROMPT)
    async with AsyncExitStack() as stack:
        for worker in fake.workers():
            await stack.enter_async_context(worker.serve(env.nc))
        yield fake


@pytest.fixture(scope="module")
def web() -> Web:
    return Web()


@pytest.fixture(scope="module")
async def agent_worker(
    env: WorkerEnv, fake_services: FakeLLM, cache_worker: None, web: Web
) -> AsyncIterator[None]:
    async with (
        serving_parts(env, config=agent_config(), fetcher=web.fetcher()) as worker,
        worker.serve(env.nc),
    ):
        yield


@pytest.fixture
def fake(fake_services: FakeLLM, web: Web) -> FakeLLM:
    fake_services.reset()
    web.reset()
    return fake_services


_tenants = itertools.count()


@pytest.fixture
def tenant() -> str:
    """A tenant of its own for each test, so tests never see each other's rows."""
    return f"t{next(_tenants)}-{uuid.uuid4().hex[:8]}"


def ctx(
    tenant: str, user: str = "alice", roles: tuple[str, ...] = (), timeout: float = 20.0
) -> Context:
    return new_context(tenant, user=user, roles=roles, timeout=timeout)


class AsUser:
    """Calls as one user of one tenant holding ``roles`` (a test module's subclass adds
    its calls, and may set a longer ``timeout``)."""

    timeout = 20.0

    def __init__(self, client: Client, tenant: str, user: str, *roles: str) -> None:
        self.client, self.tenant, self.user, self.roles = client, tenant, user, roles

    def ctx(self) -> Context:
        return ctx(self.tenant, self.user, self.roles, self.timeout)


def search_tool(
    name: str, description: str, collection_ids: list[str], **fields: Any
) -> dict[str, Any]:
    """A declarative tool: ``rag_search`` over fixed collections, the model giving the query."""
    return {
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
        "implementation": {
            "kind": "builtin",
            "builtin": "rag_search",
            "arguments": {"collection_ids": collection_ids},
        },
        **fields,
    }


class Api:
    """``agent.<op>.request`` calls as one tenant/user, with a fresh client."""

    def __init__(
        self,
        client: Client,
        tenant: str,
        user: str = "alice",
        roles: tuple[str, ...] = (),
        timeout: float = 20.0,
    ) -> None:
        self.client = client
        self.tenant = tenant
        self.user = user
        self.roles = roles
        self.timeout = timeout

    def as_(
        self,
        user: str | None = None,
        roles: tuple[str, ...] | None = None,
        tenant: str | None = None,
    ) -> Api:
        return Api(
            self.client,
            tenant or self.tenant,
            user or self.user,
            self.roles if roles is None else roles,
            self.timeout,
        )

    def ctx(self, timeout: float | None = None) -> Context:
        return ctx(self.tenant, self.user, self.roles, timeout or self.timeout)

    async def __call__(self, op: str, payload: dict[str, Any], timeout: float | None = None) -> Any:
        return await self.client.request(f"agent.{op}.request", payload, self.ctx(timeout))

    async def stream(
        self, op: str, payload: dict[str, Any], timeout: float | None = None
    ) -> list[Any]:
        return [
            chunk
            async for chunk in self.client.request_stream(
                f"agent.{op}.request", payload, self.ctx(timeout)
            )
        ]

    async def agent(self, **fields: Any) -> dict[str, Any]:
        body = {"name": f"agent-{uuid.uuid4().hex[:6]}", "system_prompt": "You help.", **fields}
        return await self("create", body)


@pytest.fixture
def api(client: Client, tenant: str) -> Api:
    return Api(client, tenant)
