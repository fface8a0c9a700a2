"""The ``http_get`` tool's network policy: allow-list, address checks, safe fetching.

A URL is fetched only if every check passes, on every hop:

1. scheme ``http``/``https``, no user info, a host name; the port is 80/443 unless the
   allow-list entry names it;
2. the host is not a metadata name (``metadata.google.internal``, ...), ``localhost``;
3. the host is on the tenant's allow-list (``docs.example.com``, ``*.example.com``,
   ``host:8443``);
4. the host is resolved once, and EVERY address must be public: loopback, private,
   link-local (169.254.0.0/16 holds the cloud metadata service), shared, reserved,
   multicast, unspecified, documentation ranges and the IPv6 equivalents (``fd00:ec2::254``
   is the AWS metadata address) are always refused, also when wrapped in IPv4-mapped,
   6to4, Teredo or NAT64 addresses;
5. the connection goes to the checked address (the request URL carries the IP; ``Host``
   and TLS SNI/verification carry the name), so a second, different DNS answer
   (rebinding) is never used;
6. redirects are not followed by the client: each ``Location`` is a new hop that goes
   through 1–5 again, at most ``MAX_REDIRECTS`` times;
7. the body is read up to ``MAX_BYTES`` and the whole fetch is bounded in time.

A refusal raises :class:`Refused` before any connection is made.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

MAX_REDIRECTS = 3
MAX_BYTES = 256 * 1024
TIMEOUT_S = 10.0
RESOLVE_TIMEOUT_S = 3.0
DEFAULT_PORTS = {"http": 80, "https": 443}
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml")

#: Names that reach a cloud metadata service or this machine, refused whatever they resolve to.
FORBIDDEN_NAMES = frozenset(
    {
        "localhost",
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
FORBIDDEN_SUFFIXES = (".localhost", ".internal", ".local")
#: Refused explicitly (also covered by the range checks), so the reason is plain.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Resolves a host name to its addresses (as strings); injectable for tests.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class Refused(Exception):
    """The fetch is not allowed by policy; nothing was sent."""


class FetchError(Exception):
    """The fetch was allowed but failed (timeout, connection, bad response)."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str


@dataclass(frozen=True)
class FetchResult:
    url: str
    status: int
    content_type: str
    text: str
    truncated: bool


def forbidden_reason(address: Address) -> str | None:
    """Why an address may never be contacted, or ``None`` if it is a public address."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return forbidden_reason(address.ipv4_mapped)
        if address.sixtofour is not None:
            return forbidden_reason(address.sixtofour)
        if address.teredo is not None:
            return forbidden_reason(address.teredo[0]) or forbidden_reason(address.teredo[1])
        if address in _NAT64:
            return forbidden_reason(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_private or address.is_reserved or not address.is_global:
        return "a private or reserved address"
    return None


def _ip(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _name_reason(host: str) -> str | None:
    if host in FORBIDDEN_NAMES or host.endswith(FORBIDDEN_SUFFIXES):
        return f"{host} is an internal name"
    return None


def check_allowlist_entry(entry: str) -> str | None:
    """Why an allow-list entry can never work (so it is refused when saved), or ``None``."""
    host = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry
    host = host.lower().rstrip(".").removeprefix("*.")
    if reason := _name_reason(host):
        return reason
    ip = _ip(host)
    if ip is not None and (reason := forbidden_reason(ip)):
        return f"{host} is {reason}"
    return None


def _allowed(host: str, port: int, default_port: int, allowlist: Iterable[str]) -> bool:
    for raw in allowlist:
        entry = raw.lower().rstrip(".")
        want_port = default_port
        if entry.count(":") == 1:
            entry, _, named = entry.partition(":")
            want_port = int(named)
        if port != want_port:
            continue
        if entry.startswith("*."):
            suffix = entry[1:]  # ".example.com": subdomains only
            if host.endswith(suffix) and len(host) > len(suffix):
                return True
        elif host == entry:
            return True
    return False


def check_url(url: str, allowlist: Iterable[str]) -> Target:
    """Steps 1–3 and, for an IP literal, 4: the target of ``url``, or :class:`Refused`."""
    if len(url) > 2048:
        raise Refused("URL longer than 2048 characters")
    try:
        parts = urlsplit(url)
        port_in_url = parts.port
    except ValueError:
        raise Refused("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise Refused(f"scheme {scheme or '(none)'} is not allowed; use http or https")
    if parts.username is not None or parts.password is not None:
        raise Refused("URLs with user info are not allowed")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise Refused("URL has no host")
    try:
        host = host.encode("idna").decode("ascii") if _ip(host) is None else host
    except UnicodeError:
        raise Refused("host is not a valid name") from None
    if reason := _name_reason(host):
        raise Refused(reason)
    ip = _ip(host)
    if ip is not None and (reason := forbidden_reason(ip)):
        raise Refused(f"{host} is {reason}")
    port = port_in_url or DEFAULT_PORTS[scheme]
    if not _allowed(host, port, DEFAULT_PORTS[scheme], allowlist):
        raise Refused(f"{host}:{port} is not on the tenant's http allow-list")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url=url, scheme=scheme, host=host, port=port, path=path)


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_checked(target: Target, resolver: Resolver) -> Address:
    """Step 4: resolve once; refuse if ANY address is forbidden; return the first."""
    literal = _ip(target.host)
    if literal is not None:
        return literal  # already checked in check_url
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            found = await resolver(target.host, target.port)
    except (OSError, TimeoutError) as exc:
        raise FetchError(f"cannot resolve {target.host}: {type(exc).__name__}") from None
    addresses = [a for a in (_ip(x) for x in found) if a is not None]
    if not addresses:
        raise FetchError(f"{target.host} has no addresses")
    for address in addresses:
        if reason := forbidden_reason(address):
            raise Refused(f"{target.host} resolves to {address}, {reason}")
    return addresses[0]


class SafeFetcher:
    """GETs allowed URLs; ``transport`` and ``resolver`` are injectable for tests."""

    def __init__(
        self,
        *,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
        max_bytes: int = MAX_BYTES,
        max_redirects: int = MAX_REDIRECTS,
        timeout: float = TIMEOUT_S,
    ) -> None:
        self.resolver = resolver
        self.transport = transport
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.timeout = timeout

    async def fetch(
        self, url: str, allowlist: Iterable[str], timeout: float | None = None
    ) -> FetchResult:
        allow = list(allowlist)
        budget = min(self.timeout, timeout) if timeout is not None else self.timeout
        try:
            async with asyncio.timeout(budget):
                return await self._fetch(url, allow)
        except TimeoutError:
            raise FetchError(f"fetch took longer than {budget:.1f}s") from None

    async def _fetch(self, url: str, allowlist: list[str]) -> FetchResult:
        # trust_env=False: no proxy from the environment may carry the request elsewhere.
        async with httpx.AsyncClient(
            transport=self.transport or httpx.AsyncHTTPTransport(retries=0),
            trust_env=False,
            follow_redirects=False,
            timeout=self.timeout,
        ) as client:
            for _hop in range(self.max_redirects + 1):
                target = check_url(url, allowlist)
                address = await resolve_checked(target, self.resolver)
                response = await self._send(client, target, address)
                try:
                    location = response.headers.get("location")
                    if response.is_redirect and location:
                        url = urljoin(target.url, location)
                        continue
                    return await self._read(target, response)
                finally:
                    await response.aclose()
        raise Refused(f"more than {self.max_redirects} redirects")

    async def _send(
        self, client: httpx.AsyncClient, target: Target, address: Address
    ) -> httpx.Response:
        host = f"[{address}]" if address.version == 6 else str(address)
        request = client.build_request(
            "GET",
            f"{target.scheme}://{host}:{target.port}{target.path}",
            headers={
                "Host": target.host
                if target.port == DEFAULT_PORTS[target.scheme]
                else f"{target.host}:{target.port}",
                "Accept": "text/*, application/json;q=0.9, */*;q=0.1",
                "User-Agent": "motadata-agent/0.1",
            },
            # TLS verifies the certificate against the name, not the address we dial.
            extensions={"sni_hostname": target.host},
        )
        try:
            return await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise FetchError(f"request to {target.host} failed: {type(exc).__name__}") from None

    async def _read(self, target: Target, response: httpx.Response) -> FetchResult:
        content_type = response.headers.get("content-type", "")
        if content_type and not content_type.lower().startswith(TEXT_TYPES):
            return FetchResult(
                url=target.url,
                status=response.status_code,
                content_type=content_type,
                text=f"(not returned: {content_type} is not text)",
                truncated=True,
            )
        body = bytearray()
        truncated = False
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    del body[self.max_bytes :]
                    truncated = True
                    break
        except httpx.HTTPError as exc:
            raise FetchError(f"reading from {target.host} failed: {type(exc).__name__}") from None
        return FetchResult(
            url=target.url,
            status=response.status_code,
            content_type=content_type,
            text=body.decode(response.encoding or "utf-8", errors="replace"),
            truncated=truncated,
        )
