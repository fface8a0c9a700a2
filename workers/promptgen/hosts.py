"""Hosts a spec mentions, and why one may never be fetched.

A static, early version of the Agent Service's ``http_get`` policy (docs/services/agent.md,
*Network policy*): internal names, metadata, loopback, private and other non-public
addresses are refused, and a host a spec could fetch must be on the tenant's allow-list
(``docs.example.com``, ``*.example.com`` for subdomains, ``host:8443``). Nothing is
resolved here — the Agent Service resolves, pins and re-checks every hop at run time;
this check only refuses specs that could never be allowed, before anyone reviews them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

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
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2")
)
DEFAULT_PORTS = {"http": 80, "https": 443}
# Matches start only at a scheme and never overlap (finditer resumes after a match), and
# the tail is bounded: linear in the text.
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.-]{0,15}://[^\s\"'<>`]{1,2048}")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def address_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        for inner in (address.ipv4_mapped, address.sixtofour):
            if inner is not None:
                return address_reason(inner)
        if address.teredo is not None:
            return address_reason(address.teredo[1])
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private or address.is_reserved or address.is_multicast or not address.is_global:
        return "a private or reserved address"
    return None


def host_reason(host: str) -> str | None:
    """Why ``host`` may never be fetched, whatever the allow-list says; or ``None``."""
    host = host.lower().rstrip(".")
    if host in FORBIDDEN_NAMES or host.endswith(FORBIDDEN_SUFFIXES):
        return f"{host} is an internal or metadata name"
    ip = _ip(host)
    if ip is not None and (reason := address_reason(ip)):
        return f"{host} is {reason}"
    return None


def allowed(host: str, port: int, default_port: int, allowlist: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for raw in allowlist:
        entry = raw.lower().rstrip(".")
        want = default_port
        if entry.count(":") == 1:
            entry, _, named = entry.partition(":")
            want = int(named) if named.isdigit() else -1
        if port != want:
            continue
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif host == entry:
            return True
    return False


def urls_in(text: str) -> list[str]:
    return [m.group(0).rstrip(".,:!?") for m in _URL.finditer(text)]


def is_metadata(host: str) -> bool:
    host = host.lower().rstrip(".")
    ip = _ip(host)
    return (ip is not None and ip in METADATA_ADDRESSES) or (
        host in FORBIDDEN_NAMES and host != "localhost"
    )


def problems(text: str, allowlist: list[str], can_fetch: bool) -> list[str]:
    """What in ``text`` a spec must not carry: a metadata host or address, always; and when
    the spec can fetch (``http_get``), any host that could never be fetched or that is
    not on the tenant's allow-list."""
    out: list[str] = []
    for url in urls_in(text):
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            port = parts.port
        except ValueError:
            out.append(f"{url[:80]} is not a valid URL")
            continue
        scheme = parts.scheme.lower()
        if not host:
            continue
        if not can_fetch:
            if is_metadata(host):
                out.append(f"{host} is a cloud metadata address")
            continue
        if reason := host_reason(host):
            out.append(reason)
        elif scheme not in DEFAULT_PORTS:
            out.append(f"{url[:80]}: only http and https can be fetched")
        elif not allowed(host, port or DEFAULT_PORTS[scheme], DEFAULT_PORTS[scheme], allowlist):
            out.append(f"{host} is not on the tenant's http allow-list")
    for m in _IPV4.finditer(text):
        ip = m.group(0)
        if any(ip in p for p in out):
            continue
        if is_metadata(ip):
            out.append(f"{ip} is a cloud metadata address")
        elif can_fetch and (reason := host_reason(ip)):
            out.append(reason)
    return list(dict.fromkeys(out))
