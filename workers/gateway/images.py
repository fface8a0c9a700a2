"""Which image URLs a generation may carry (docs/security.md, "Image URLs").

Some litellm providers fetch an ``https://`` image URL themselves to inline it (from the
gateway's own network), others pass it to the provider, which fetches it from theirs.
Either way the caller picks a URL that something fetches on its behalf, blind. So an
``https://`` image URL is accepted only for hosts the operator lists in
``GATEWAY_IMAGE_URL_HOSTS`` (``["images.example.com", "*.cdn.example.com"]``; ``"*"``:
any host name). Addresses (``https://10.0.0.1/``), ``localhost`` and single-label names
are refused whatever the list says. Inline ``data:`` URLs are always accepted.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from bus.errors import InvalidRequest
from schemas.gateway import GenerateRequest


def _allowed(host: str, hosts: tuple[str, ...]) -> bool:
    for pattern in hosts:
        pattern = pattern.lower().rstrip(".")
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def check_image_urls(req: GenerateRequest, hosts: tuple[str, ...]) -> None:
    """Refuse an ``https://`` image URL whose host the operator did not allow."""
    for message in req.messages:
        content = message.content
        if not isinstance(content, list):
            continue
        for part in content:
            image = part.image_url
            if image is None or image.url.startswith("data:"):
                continue
            host = (urlsplit(image.url).hostname or "").lower().rstrip(".")
            try:
                ipaddress.ip_address(host)
                literal = True
            except ValueError:
                literal = False
            if literal or "." not in host or host.endswith(".localhost"):
                raise InvalidRequest(
                    f"image URL host {host!r} is refused: give a public host name or a data: URL"
                )
            if not _allowed(host, hosts):
                raise InvalidRequest(
                    f"image URLs from {host!r} are not allowed here; send the image inline as "
                    "a data: URL (the operator can allow hosts with GATEWAY_IMAGE_URL_HOSTS)"
                )
