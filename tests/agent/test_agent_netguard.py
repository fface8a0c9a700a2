"""The http_get policy and the calculator, without a single outbound connection.

Names resolve through an injected resolver and requests go to an injected transport
(``tests.agent_env.Web``), so the tests show what WOULD be contacted.
"""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from tests.agent_env import Web
from workers.agent import calculator, netguard

ALLOW = ["docs.example.com", "*.example.org", "api.example.net:8443"]
PUBLIC = "93.184.216.34"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # AWS/GCP/Azure metadata
        "169.254.170.2",  # ECS task metadata
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fe80::1",
        "100.64.0.1",  # shared address space
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 wrapping 169.254.169.254
        "fc00::1",
    ],
)
def test_internal_addresses_are_always_forbidden(address):
    assert netguard.forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert netguard.forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/latest/", "metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "internal name"),
        ("http://localhost:8080/", "internal name"),
        ("http://127.0.0.1/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://10.0.0.5/", "private"),
        ("http://intranet.local/", "internal name"),
        ("https://evil.example.com/", "allow-list"),
        ("https://example.org/", "allow-list"),  # *.example.org means subdomains only
        ("https://docs.example.com:8443/", "allow-list"),  # port not named
        ("ftp://docs.example.com/file", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("https://user:pw@docs.example.com/", "user info"),
        ("docs.example.com/path", "scheme"),
    ],
)
def test_urls_refused_before_any_lookup(url, why):
    with pytest.raises(netguard.Refused, match=why):
        netguard.check_url(url, ALLOW)


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("https://docs.example.com/a?b=1", "docs.example.com", 443),
        ("http://DOCS.example.com./", "docs.example.com", 80),
        ("https://a.b.example.org/", "a.b.example.org", 443),
        ("https://api.example.net:8443/v1", "api.example.net", 8443),
    ],
)
def test_allow_listed_urls_pass_the_static_checks(url, host, port):
    target = netguard.check_url(url, ALLOW)
    assert (target.host, target.port) == (host, port)


@pytest.mark.parametrize(
    "entry", ["localhost", "169.254.169.254", "10.0.0.1", "metadata.google.internal", "x.local"]
)
def test_allow_list_entries_that_can_never_work_are_named(entry):
    assert netguard.check_allowlist_entry(entry) is not None


async def test_a_name_resolving_to_any_internal_address_is_refused_without_connecting():
    web = Web()
    web.dns["docs.example.com"] = [PUBLIC, "127.0.0.1"]
    with pytest.raises(netguard.Refused, match="resolves to 127.0.0.1"):
        await web.fetcher().fetch("https://docs.example.com/", ALLOW)
    assert web.lookups == ["docs.example.com"] and web.sent == []


async def test_the_connection_goes_to_the_checked_address_not_a_second_lookup():
    web = Web()
    answers = iter([[PUBLIC], ["169.254.169.254"]])  # a rebinding DNS server

    async def rebinding(host: str, port: int) -> list[str]:
        web.lookups.append(host)
        return next(answers)

    web.pages[(PUBLIC, "/page")] = httpx.Response(200, text="hello")
    fetcher = netguard.SafeFetcher(resolver=rebinding, transport=httpx.MockTransport(web.handle))
    page = await fetcher.fetch("http://docs.example.com/page", ALLOW)
    assert page.text == "hello" and page.status == 200
    assert web.lookups == ["docs.example.com"]  # resolved once
    (sent,) = web.sent
    assert sent.url.host == PUBLIC and sent.headers["host"] == "docs.example.com"


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://127.0.0.1:22/", "loopback"),
        ("https://attacker.example.com/", "allow-list"),
        ("http://sub.example.org/internal", "resolves to 10.0.0.7"),  # allowed name, bad DNS
    ],
)
async def test_redirects_are_checked_hop_by_hop(location, why):
    web = Web()
    web.dns["docs.example.com"] = [PUBLIC]
    web.dns["sub.example.org"] = ["10.0.0.7"]
    web.pages[(PUBLIC, "/go")] = httpx.Response(302, headers={"location": location})
    with pytest.raises(netguard.Refused, match=why):
        await web.fetcher().fetch("http://docs.example.com/go", ALLOW)
    assert [r.url.host for r in web.sent] == [PUBLIC]  # only the first hop was sent


async def test_redirect_chains_are_capped():
    web = Web()
    web.dns["docs.example.com"] = [PUBLIC]
    web.pages[(PUBLIC, "/loop")] = httpx.Response(302, headers={"location": "/loop"})
    with pytest.raises(netguard.Refused, match="redirects"):
        await web.fetcher(max_redirects=3).fetch("http://docs.example.com/loop", ALLOW)
    assert len(web.sent) == 4


async def test_allowed_redirect_is_followed():
    web = Web()
    web.dns["docs.example.com"] = [PUBLIC]
    web.dns["a.example.org"] = ["8.8.4.4"]
    web.pages[(PUBLIC, "/old")] = httpx.Response(
        301, headers={"location": "https://a.example.org/new"}
    )
    web.pages[("8.8.4.4", "/new")] = httpx.Response(200, text="moved here")
    page = await web.fetcher().fetch("http://docs.example.com/old", ALLOW)
    assert page.text == "moved here" and page.url == "https://a.example.org/new"


async def test_large_bodies_are_cut_at_the_size_cap():
    web = Web()
    web.dns["docs.example.com"] = [PUBLIC]
    web.pages[(PUBLIC, "/big")] = httpx.Response(200, text="x" * 10_000)
    page = await web.fetcher(max_bytes=1000).fetch("http://docs.example.com/big", ALLOW)
    assert len(page.text) == 1000 and page.truncated


async def test_binary_bodies_are_not_returned():
    web = Web()
    web.dns["docs.example.com"] = [PUBLIC]
    web.pages[(PUBLIC, "/img")] = httpx.Response(
        200, content=b"\x89PNG", headers={"content-type": "image/png"}
    )
    page = await web.fetcher().fetch("http://docs.example.com/img", ALLOW)
    assert "not text" in page.text


async def test_unknown_host_is_a_fetch_error_not_a_crash():
    with pytest.raises(netguard.FetchError):
        await Web().fetcher().fetch("http://docs.example.com/", ALLOW)


@pytest.mark.parametrize(
    ("expression", "value"),
    [("2+3*4", 14), ("(1.5+2)**2", 12.25), ("sqrt(16) + abs(-2)", 6.0), ("10 // 3 % 2", 1)],
)
def test_calculator_computes_arithmetic(expression, value):
    assert calculator.evaluate(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('id')",
        "().__class__.__bases__",
        "open('/etc/passwd')",
        "lambda: 1",
        "9**9**9",
        "10**1000",
        "round(5, -10**50)",
        "[1] * 10",
        "x",
        "1/0",
        "1" * 600,
        "True + 1",
    ],
)
def test_calculator_refuses_anything_else_without_evaluating(expression):
    with pytest.raises(calculator.CalculatorError):
        calculator.evaluate(expression)
