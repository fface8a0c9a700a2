"""Bridge authentication against real NATS, Redis, the cache worker and a JWKS server."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateway_bridge.app import create_app
from tests.bridge_support import (
    ALL_ROUTES,
    AUDIENCE,
    ISSUER,
    SECRET,
    JwksServer,
    KeyPair,
    auth,
    bridge_settings,
    hmac_signer,
    hs_token,
    http,
    raw_token,
    serving,
)

pytestmark = pytest.mark.usefixtures("cache_worker")

RSA = KeyPair.rsa()
EC = KeyPair.ec()
GET = "/api/v1/cache/get"


@pytest.fixture(scope="module")
async def jwks():
    server = JwksServer(keys=[RSA, EC])
    async with serving(server.app()) as url:
        yield server, f"{url}/jwks.json"


@pytest.fixture(scope="module")
async def bridge(settings, jwks, cache_worker):
    """The most permissive set-up: a shared secret and a JWKS, with aud/iss checked."""
    s = bridge_settings(settings, jwt_jwks_url=jwks[1], jwt_audience=AUDIENCE, jwt_issuer=ISSUER)
    async with serving(create_app(s, ALL_ROUTES)) as url:
        yield url


@pytest.fixture(scope="module")
async def jwks_only(settings, jwks, cache_worker):
    s = bridge_settings(settings, jwt_secret=None, jwt_jwks_url=jwks[1])
    async with serving(create_app(s, ALL_ROUTES)) as url:
        yield url


def claims(**overrides):
    now = int(time.time())
    out = {
        "tenant_id": "acme",
        "sub": "u1",
        "exp": now + 600,
        "aud": AUDIENCE,
        "iss": ISSUER,
    }
    out.update(overrides)
    return out  # None values are left out of the token


def _bad_signature() -> str:
    impostor = KeyPair.rsa()
    impostor.kid = RSA.kid  # same kid, another private key
    return impostor.token(aud=AUDIENCE, iss=ISSUER)


HOSTILE = {
    "alg_none": lambda: raw_token({"alg": "none", "typ": "JWT"}, claims()),
    "alg_none_uppercase": lambda: raw_token({"alg": "NONE", "typ": "JWT"}, claims()),
    "hs256_signed_with_rs_public_key": lambda: raw_token(
        {"alg": "HS256", "typ": "JWT", "kid": RSA.kid}, claims(), hmac_signer(RSA.public_pem())
    ),
    "expired": lambda: RSA.token(**claims(exp=int(time.time()) - 3600)),
    "nbf_in_future": lambda: RSA.token(**claims(nbf=int(time.time()) + 3600)),
    "wrong_aud": lambda: RSA.token(**claims(aud="someone-else")),
    "wrong_iss": lambda: RSA.token(**claims(iss="https://evil.test")),
    "missing_exp": lambda: RSA.token(**claims(exp=None)),
    "missing_aud": lambda: RSA.token(**claims(aud=None)),
    "bad_signature": _bad_signature,
    "hs256_wrong_secret": lambda: hs_token("y" * 48, **claims()),
    "es256_header_on_rsa_key": lambda: raw_token(
        {"alg": "ES256", "kid": RSA.kid}, claims(), lambda data: b"\x00" * 64
    ),
    "unknown_kid": lambda: KeyPair.ec().token(aud=AUDIENCE, iss=ISSUER),
    "malformed_garbage": lambda: "not-a-jwt",
    "malformed_two_parts": lambda: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0",
    "malformed_bad_base64": lambda: "eyJhbGciOiJIUzI1NiJ9.@@@.###",
    "no_tenant_claim": lambda: RSA.token(**claims(tenant_id=None)),
    "tenant_with_colon": lambda: RSA.token(**claims(tenant_id="a:b")),
    "no_sub": lambda: RSA.token(**claims(sub=None)),
    "roles_not_a_list": lambda: RSA.token(**claims(roles={"admin": True})),
}


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
async def test_hostile_token_is_401_problem(bridge, make):
    async with http(bridge) as c:
        r = await c.post(GET, json={"key": "k"}, headers=auth(make()))
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "unauthenticated" and body["status"] == 401
    assert body["correlation_id"] == r.headers["x-correlation-id"]
    assert r.headers["www-authenticate"].startswith('Bearer realm="mesh", error="invalid_token"')


async def test_missing_authorization_is_401_with_bearer_challenge(bridge):
    async with http(bridge) as c:
        r = await c.post(GET, json={"key": "k"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="mesh"'


async def test_basic_auth_scheme_is_401(bridge):
    async with http(bridge) as c:
        r = await c.post(GET, json={"key": "k"}, headers={"Authorization": "Basic dTpw"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    "make",
    [
        lambda: RSA.token(**claims()),
        lambda: EC.token(**claims()),
        lambda: hs_token(SECRET, **claims()),
    ],
    ids=["rs256_from_jwks", "es256_from_jwks", "hs256_shared_secret"],
)
async def test_valid_token_reaches_the_cache_worker(bridge, make):
    async with http(bridge) as c:
        r = await c.post(GET, json={"key": f"never-{uuid.uuid4().hex}"}, headers=auth(make()))
    assert r.status_code == 200, r.text
    assert r.json() == {"hit": False, "value": None}


async def test_jwks_only_bridge_rejects_hs256_signed_with_the_public_key(jwks_only):
    forged = raw_token(
        {"alg": "HS256", "kid": RSA.kid}, claims(aud=None, iss=None), hmac_signer(RSA.public_pem())
    )
    async with http(jwks_only) as c:
        forged_r = await c.post(GET, json={"key": "k"}, headers=auth(forged))
        genuine_r = await c.post(GET, json={"key": "k"}, headers=auth(RSA.token()))
    assert forged_r.status_code == 401
    assert genuine_r.status_code == 200


async def test_jwks_rotation_is_picked_up(settings, cache_worker):
    old, new = KeyPair.rsa(), KeyPair.rsa()
    server = JwksServer(keys=[old])
    async with serving(server.app()) as jwks_url:
        s = bridge_settings(
            settings,
            jwt_secret=None,
            jwt_jwks_url=f"{jwks_url}/jwks.json",
            jwt_jwks_min_refresh_seconds=0.3,
        )
        async with serving(create_app(s, ALL_ROUTES)) as url, http(url) as c:
            assert (
                await c.post(GET, json={"key": "k"}, headers=auth(old.token()))
            ).status_code == 200
            server.keys = [new]  # the identity provider rotates: new key in, old key out
            await asyncio.sleep(0.4)
            rotated = await c.post(GET, json={"key": "k"}, headers=auth(new.token()))
            assert rotated.status_code == 200, rotated.text
            await asyncio.sleep(0.4)
            # A token not seen before (the verified-token cache would honour the very same
            # string for up to a minute, and tokens minted in one second are identical).
            fresh = old.token(jti=uuid.uuid4().hex)
            retired = await c.post(GET, json={"key": "k"}, headers=auth(fresh))
            assert retired.status_code == 401


async def test_unknown_kids_refetch_the_jwks_at_most_once_per_interval(settings, cache_worker):
    key = KeyPair.rsa()
    server = JwksServer(keys=[key])
    async with serving(server.app()) as jwks_url:
        s = bridge_settings(
            settings,
            jwt_secret=None,
            jwt_jwks_url=f"{jwks_url}/jwks.json",
            jwt_jwks_min_refresh_seconds=30,
        )
        async with serving(create_app(s, ALL_ROUTES)) as url, http(url) as c:
            assert (
                await c.post(GET, json={"key": "k"}, headers=auth(key.token()))
            ).status_code == 200
            assert server.fetches == 1
            for _ in range(10):
                made_up = KeyPair.ec().token()
                assert (
                    await c.post(GET, json={"key": "k"}, headers=auth(made_up))
                ).status_code == 401
            assert server.fetches == 1


async def test_unreachable_jwks_without_cached_keys_is_503(settings, cache_worker):
    server = JwksServer(keys=[])
    async with serving(server.app()) as jwks_url:
        dead = f"{jwks_url}/nowhere.json"  # answers 404: no keys can be had
        s = bridge_settings(settings, jwt_secret=None, jwt_jwks_url=dead)
        async with serving(create_app(s, ALL_ROUTES)) as url, http(url) as c:
            r = await c.post(GET, json={"key": "k"}, headers=auth(KeyPair.rsa().token()))
    assert r.status_code == 503
    assert r.json()["code"] == "unavailable"


async def test_tenant_claim_name_is_configurable(settings, cache_worker):
    s = bridge_settings(settings, jwt_tenant_claim="org")
    token = hs_token(tenant="ignored", org="globex")
    async with serving(create_app(s, ALL_ROUTES)) as url, http(url) as c:
        r = await c.post(GET, json={"key": "k"}, headers=auth(token))
        missing = await c.post(GET, json={"key": "k"}, headers=auth(hs_token()))
    assert r.status_code == 200
    assert missing.status_code == 401
