"""``GET /dashboard``: the LLMOps dashboard, one static page (plain SVG, no CDN).

The page holds no data: it asks for a bearer token (or takes one from the URL fragment,
``/dashboard#token=...``, which browsers never send to a server) and calls the
``/api/v1/llmops/...`` routes with it, so it sees exactly what that token's tenant may
see. Its Content-Security-Policy allows only its own inline script and style (by hash)
and requests to this bridge.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute


def _hashes(html: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
        for b in blocks
    )


class Dashboard:
    def __init__(self) -> None:
        html = (resources.files("gateway_bridge") / "dashboard.html").read_text()
        self._body = html.encode()
        self._headers = {
            "Content-Security-Policy": (
                "default-src 'none'; "
                f"script-src {_hashes(html, 'script')}; "
                f"style-src {_hashes(html, 'style')}; "
                "connect-src 'self'; img-src 'self' data:; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }

    async def page(self, request: Request) -> Response:
        return Response(self._body, media_type="text/html", headers=self._headers)

    def routes(self) -> list[HttpRoute]:
        return [HttpRoute("/dashboard", self.page, methods=["GET"])]
