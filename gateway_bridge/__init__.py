"""The HTTP edge of the mesh: JWT auth, tenant context, rate limits, routes → subjects,
SSE, OpenAPI, health and metrics. See docs/bridge.md."""

from gateway_bridge.app import Bridge, create_app
from gateway_bridge.auth import Authenticator, Principal
from gateway_bridge.ratelimit import Quota, RateLimiter
from gateway_bridge.routes import ROUTES
from gateway_bridge.tokens import mint_token

__all__ = [
    "ROUTES",
    "Authenticator",
    "Bridge",
    "Principal",
    "Quota",
    "RateLimiter",
    "create_app",
    "mint_token",
]
