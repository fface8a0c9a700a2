"""Minting HS256 development tokens (``mesh token``, the token ``mesh up`` prints)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import jwt

#: Lifetime of a minted token unless asked otherwise.
DEFAULT_TTL_S = 3600


def mint_token(
    secret: str,
    *,
    tenant: str,
    user: str,
    roles: Iterable[str] = (),
    ttl: float = DEFAULT_TTL_S,
    audience: str | None = None,
    issuer: str | None = None,
    tenant_claim: str = "tenant_id",
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user,
        tenant_claim: tenant,
        "roles": list(roles),
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl),
    }
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
