"""Bearer JWT authentication: HS256 with a shared secret, RS256/ES256 with keys from a JWKS.

The algorithm is never taken on trust from the token: a shared secret only verifies
HS256, an RSA key only RS256, an EC P-256 key only ES256. So ``alg: none`` and the
classic confusion attack (HS256 "signed" with the RSA public key) fail before any
signature is checked. ``exp`` is required; ``nbf`` is honoured; ``aud`` and ``iss`` are
checked when configured. Tenant, user and roles come from the verified claims only.

Verified tokens are cached (like Envoy's ``jwt_authn`` ``jwt_cache_config``): the same
bearer string presented again skips the signature check, but its ``exp``/``nbf`` are
checked on every use and an entry lives at most :data:`TOKEN_CACHE_TTL_S`, so a key
retired from the JWKS stops being honoured within that time.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import structlog
from pydantic import ValidationError

from bus.errors import Unauthenticated, Unavailable
from gateway_bridge.settings import BridgeSettings
from schemas.context import Context

_log = structlog.get_logger(__name__)

#: RFC 7518 §3.2: an HMAC key at least as long as the hash output.
MIN_SECRET_BYTES = 32
JWKS_FETCH_TIMEOUT_S = 5.0
#: The one algorithm each kind of key may verify.
HMAC_ALGORITHM = "HS256"
_PINNED = {("RSA", None): "RS256", ("EC", "P-256"): "ES256"}
#: Verified tokens remembered, and for how long at most (seconds).
TOKEN_CACHE_SIZE = 10_000
TOKEN_CACHE_TTL_S = 60.0


@dataclass(frozen=True)
class Principal:
    """Who the verified token says is calling."""

    tenant: str
    user: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    not_before: float
    expires: float
    forget_at: float


@dataclass(frozen=True)
class _Key:
    key: Any
    algorithm: str


class JwksCache:
    """Signing keys from a JWKS URL, cached.

    The set is refetched when older than ``ttl``; a token naming a ``kid`` the cache does
    not know triggers a refetch at most once per ``min_refresh`` seconds (so a flood of
    made-up kids cannot turn the bridge into a load generator against the key server).
    """

    def __init__(
        self, url: str, http: httpx.AsyncClient, *, min_refresh: float, ttl: float
    ) -> None:
        self.url = url
        self._http = http
        self._min_refresh = min_refresh
        self._ttl = ttl
        self._keys: dict[str | None, _Key] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str | None) -> _Key | None:
        """The key named ``kid`` (or the only key, for a token without one), else ``None``."""
        now = time.monotonic()
        stale = self._fetched_at is None or now - self._fetched_at > self._ttl
        if stale and self._may_refetch(now):
            await self._refresh()
        found = self._lookup(kid)
        if found is None and self._may_refetch(time.monotonic()):
            await self._refresh()
            found = self._lookup(kid)
        if found is None and not self._keys:
            raise Unavailable("the token signing keys cannot be fetched")
        return found

    def _lookup(self, kid: str | None) -> _Key | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _may_refetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_refresh

    async def _refresh(self) -> None:
        asked_at = time.monotonic()
        async with self._lock:
            # Another request fetched while this one waited for the lock: use its result.
            if self._attempted_at is not None and self._attempted_at >= asked_at:
                return
            self._attempted_at = time.monotonic()
            self.fetches += 1
            try:
                response = await self._http.get(self.url, timeout=JWKS_FETCH_TIMEOUT_S)
                response.raise_for_status()
                keys = _parse_jwks(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                # Keep serving the keys we have (if any) until the next allowed attempt.
                _log.warning("jwks_fetch_failed", url=self.url, error=type(exc).__name__)
                return
            self._keys = keys
            self._fetched_at = time.monotonic()
            _log.info("jwks_fetched", url=self.url, keys=len(keys))


def _parse_jwks(document: Any) -> dict[str | None, _Key]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set")
    keys: dict[str | None, _Key] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kty, crv = jwk.get("kty"), jwk.get("crv")
        if not isinstance(kty, str) or (kty == "EC" and not isinstance(crv, str)):
            continue
        pinned = _PINNED.get((kty, crv if kty == "EC" else None))
        if pinned is None or jwk.get("alg", pinned) != pinned:
            continue  # symmetric keys, other curves, or a key declaring another algorithm
        try:
            parsed = jwt.PyJWK(jwk, algorithm=pinned)
        except jwt.PyJWTError:
            continue
        kid = jwk.get("kid")
        keys[kid if isinstance(kid, str) else None] = _Key(parsed.key, pinned)
    return keys


class Authenticator:
    """Verifies ``Authorization: Bearer <JWT>`` and returns the :class:`Principal`."""

    def __init__(self, settings: BridgeSettings, http: httpx.AsyncClient | None = None) -> None:
        secret = settings.jwt_secret
        if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long")
        if secret is None and settings.jwt_jwks_url is None:
            raise ValueError("set JWT_SECRET or JWT_JWKS_URL: the bridge never runs without auth")
        self._secret = secret.encode() if secret is not None else None
        self._jwks: JwksCache | None = None
        if settings.jwt_jwks_url is not None:
            if http is None:
                raise ValueError("JWT_JWKS_URL needs an HTTP client")
            self._jwks = JwksCache(
                settings.jwt_jwks_url,
                http,
                min_refresh=settings.jwt_jwks_min_refresh_seconds,
                ttl=settings.jwt_jwks_ttl_seconds,
            )
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._tenant_claim = settings.jwt_tenant_claim
        self._leeway = settings.jwt_leeway_seconds
        required = ["exp"]
        if self._audience is not None:
            required.append("aud")
        if self._issuer is not None:
            required.append("iss")
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        self._options: jwt.types.Options = {
            "require": required,
            "verify_aud": self._audience is not None,
            "verify_iss": self._issuer is not None,
        }

    @property
    def jwks(self) -> JwksCache | None:
        return self._jwks

    async def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer(authorization)
        now = time.time()
        seen = self._verified.get(token)
        if seen is not None and now < seen.forget_at:
            if now >= seen.expires + self._leeway:
                raise Unauthenticated("token expired")
            if now < seen.not_before - self._leeway:
                raise Unauthenticated("token not valid yet")
            return seen.principal
        claims = await self._verify(token)
        principal = self._principal(claims)
        expires = float(claims["exp"])
        self._verified[token] = _Verified(
            principal=principal,
            not_before=float(claims.get("nbf", 0)),
            expires=expires,
            forget_at=min(now + TOKEN_CACHE_TTL_S, expires + self._leeway),
        )
        if len(self._verified) > TOKEN_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> dict[str, Any]:
        """Check signature and registered claims; return the claims or raise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token") from None
        algorithm = header.get("alg")
        key: Any
        if algorithm == HMAC_ALGORITHM and self._secret is not None:
            key = self._secret
        elif algorithm in ("RS256", "ES256") and self._jwks is not None:
            kid = header.get("kid")
            found = await self._jwks.key(kid if isinstance(kid, str) else None)
            if found is None or found.algorithm != algorithm:
                raise Unauthenticated("token signed with an unknown key")
            key = found.key
        else:
            raise Unauthenticated(f"token algorithm {str(algorithm)[:16]!r} is not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token issuer not accepted") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature invalid") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token") from None
        if not isinstance(claims.get("exp"), int | float):
            raise Unauthenticated("token 'exp' must be a number")
        verified: dict[str, Any] = claims
        return verified

    def _principal(self, claims: dict[str, Any]) -> Principal:
        tenant = claims.get(self._tenant_claim)
        user = claims.get("sub")
        roles = claims.get("roles", [])
        if isinstance(roles, str):
            roles = roles.split()
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated(f"token lacks a {self._tenant_claim!r} claim")
        if not isinstance(user, str) or not user:
            raise Unauthenticated("token lacks a 'sub' claim")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthenticated("token 'roles' claim must be a list of strings")
        try:
            # The context model is the one definition of a valid tenant/user/roles.
            Context(tenant=tenant, user=user, roles=tuple(roles))
        except ValidationError:
            raise Unauthenticated("token claims are not valid tenant/user/roles") from None
        return Principal(tenant=tenant, user=user, roles=tuple(roles))


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing Authorization: Bearer token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("expected Authorization: Bearer <token>")
    return token
