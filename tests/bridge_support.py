"""Helpers for the bridge tests: a real uvicorn on 127.0.0.1, keys, tokens, a JWKS server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as HttpRoute

from bus.settings import Settings
from gateway_bridge.routes import ROUTES
from gateway_bridge.settings import BridgeSettings
from mesh.infra import READY_TIMEOUT_S
from schemas.routes import Route
from tests.support import COUNT, EchoRequest, EchoResponse, Empty, SleepRequest, probe_op

#: Minted once per test session; never a fixed secret.
SECRET = secrets.token_urlsafe(48)
AUDIENCE = "mesh-tests"
ISSUER = "https://issuer.test"

PROBE_ROUTES: tuple[Route, ...] = (
    Route(
        "POST", "/api/v1/probe/echo", probe_op("echo", EchoRequest, EchoResponse, idempotent=False)
    ),
    Route(
        "GET",
        "/api/v1/probe/echo/{text}",
        probe_op("echo", EchoRequest, EchoResponse, idempotent=False),
    ),
    Route("POST", "/api/v1/probe/sleep", probe_op("sleep", SleepRequest, Empty, idempotent=False)),
    Route("POST", "/api/v1/probe/missing", probe_op("missing", Empty, Empty, idempotent=False)),
    Route("POST", "/api/v1/probe/crash", probe_op("crash", Empty, Empty, idempotent=False)),
    Route("POST", "/api/v1/probe/count", COUNT),
)
ALL_ROUTES = (*ROUTES, *PROBE_ROUTES)


def bridge_settings(base: Settings, **overrides: Any) -> BridgeSettings:
    """The bridge's settings on the session's servers, with a test secret and no quotas
    worth noticing; ``overrides`` are BridgeSettings fields."""
    values: dict[str, Any] = {
        "jwt_secret": SECRET,
        "rate_limit_tenant": "100000/60",
        "rate_limit_user": "100000/60",
        "log_level": "warning",
        **overrides,
    }
    return BridgeSettings(**{**base.model_dump(), **values})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test process keeps its own signal handlers


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Run ``app`` under a real uvicorn on a free 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", access_log=False, timeout_graceful_shutdown=5
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):  # generous: a loaded machine is slow
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped during startup")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def hs_token(secret: str = SECRET, *, tenant: str = "acme", user: str = "u1", **claims: Any) -> str:
    return jwt.encode(_claims(tenant, user, claims), secret, algorithm="HS256")


def _claims(tenant: str, user: str, extra: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"tenant_id": tenant, "sub": user, "exp": now + 600, "iat": now}
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A token built by hand (PyJWT refuses to build hostile ones)."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps({k: v for k, v in claims.items() if v is not None}).encode())
    signing_input = f"{head}.{body}".encode()
    signature = sign(signing_input) if sign else b""
    return f"{head}.{body}.{b64url(signature)}"


def hmac_signer(key: bytes) -> Any:
    return lambda data: hmac.new(key, data, hashlib.sha256).digest()


@dataclass
class KeyPair:
    kid: str
    private: Any
    algorithm: str

    @classmethod
    def rsa(cls) -> KeyPair:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(f"rsa-{uuid.uuid4().hex[:8]}", key, "RS256")

    @classmethod
    def ec(cls) -> KeyPair:
        return cls(f"ec-{uuid.uuid4().hex[:8]}", ec.generate_private_key(ec.SECP256R1()), "ES256")

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        data: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        data.update({"kid": self.kid, "use": "sig", "alg": self.algorithm})
        return data

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, *, tenant: str = "acme", user: str = "u1", **claims: Any) -> str:
        return jwt.encode(
            _claims(tenant, user, claims),
            self.private,
            algorithm=self.algorithm,
            headers={"kid": self.kid},
        )


@dataclass
class JwksServer:
    """A JWKS document served over real HTTP; tests swap ``keys`` to rotate."""

    keys: list[KeyPair] = field(default_factory=list)
    fetches: int = 0

    def app(self) -> Starlette:
        async def jwks(request: Request) -> JSONResponse:
            self.fetches += 1
            return JSONResponse({"keys": [k.jwk() for k in self.keys]})

        return Starlette(routes=[HttpRoute("/jwks.json", jwks)])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        yield client
