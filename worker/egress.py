"""Outbound requests a client can aim, and the addresses they may reach: a webhook's
callback_url (called by the workers) and an image URL (fetched by the upstream, which may be a
self-hosted server inside the workers' own network).

Refused unless the operator allows them: every address that is not public unicast (ipaddress's
`is_global`: loopback, private, link-local, unspecified, shared, reserved, documentation...) and
multicast, also when an IPv6 address embeds one (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
`::a.b.c.d`, 6to4 `2002::/16`, NAT64 `64:ff9b::/96`).

Webhooks: the name is resolved when the request is sent, every address it resolves to is
checked, and the connection goes to a checked address, the name kept in the Host header and TLS
SNI (`client`): no second lookup, so no DNS answer can change between the check and the call.
WEBHOOK_ALLOWED_NETWORKS allows networks (e.g. a cluster's service network).

Image URLs are not fetched here, so not resolved: a host that is an IP literal (in any form a
resolver reads: `2130706433`, `0x7f.1`, `[::ffff:127.0.0.1]`, full-width digits...) or
`localhost` (and `*.localhost`) is refused unless IMAGE_URLS_ALLOW_PRIVATE is set.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# what inet_aton reads as an IPv4 address: 1-4 parts, decimal, octal (0...) or hex (0x...)
_IPV4_ISH = re.compile(r"^[0-9a-fx.]+$")


# anyio.getaddrinfo's signature: (host, port, *, type=...) -> [(family, type, proto, canonname, sockaddr)]
Resolver = Callable[..., Awaitable[list[tuple[Any, Any, int, str, tuple[Any, ...]]]]]


class Refused(Exception):
    """An address the policy refuses: the message names the host, the address and why."""


def networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def problem(ip: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why `ip` is refused ('a loopback address', ...), or None: public unicast, or in `allowed`."""
    inner = _embedded(ip)
    if any(a in net for net in allowed for a in (ip, inner) if a is not None):
        return None
    if inner is not None and (why := _kind(inner)):
        return f"{why} (in {ip})"
    return _kind(ip)


def _kind(ip: IPAddress) -> str | None:
    for kind, test in (
        ("an unspecified", ip.is_unspecified),
        ("a loopback", ip.is_loopback),
        ("a link-local", ip.is_link_local),
        ("a multicast", ip.is_multicast),
        ("a private", ip.is_private),
        ("a non-public", not ip.is_global),
    ):
        if test:
            return f"{kind} address"
    return None


def _embedded(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries to its destination, if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    for inner in (ip.ipv4_mapped, ip.sixtofour):
        if inner is not None:
            return inner
    if ip in _NAT64 or (ip in _V4_COMPATIBLE and int(ip) > 1):  # (:: and ::1 are IPv6's own)
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def literal(host: str) -> IPAddress | None:
    """The address `host` names when it is an IP literal in any form a resolver reads, else None."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _IPV4_ISH.match(host):
        try:  # inet_aton: what getaddrinfo (and so most HTTP clients) reads as IPv4, e.g. 127.1
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


# ---------------------------------------------------------------- image URLs


def image_url_problem(url: str) -> str | None:
    """Why an http(s) image URL is refused (its host is a non-public IP literal or localhost), or None."""
    for host in _hosts(url):
        if host == "localhost" or host.endswith(".localhost"):
            return f"its host {host!r} is this machine"
        ip = literal(host)
        if ip is not None and (why := problem(ip)):
            return f"its host {host!r} is {why}"
    return None


def _hosts(url: str) -> set[str]:
    """The host of `url` as urllib reads it and as a WHATWG parser (a browser, many HTTP clients)
    does (tab and newline dropped, `\\` ends the authority, percent-decoded, IDNA-mapped), each
    lower-case, without spaces, control characters or a trailing dot: a URL parsers disagree on
    is checked both ways."""
    found = set()
    try:
        found.add(urlsplit(url).hostname or "")
    except ValueError:
        pass
    whatwg = re.sub(r"[\t\n\r]", "", url).strip("".join(map(chr, range(0x21))))
    authority = re.split(r"[/\\?#]", whatwg.partition("://")[2], maxsplit=1)[0].rpartition("@")[2]
    host = authority.partition("]")[0] if authority.startswith("[") else authority.rpartition(":")[0]
    host = unquote(host or authority)
    try:
        host = host.encode("idna").decode()
    except UnicodeError:
        pass
    found.add(host)
    return {re.sub(r"[\x00-\x20\x7f]", "", h).strip("[]").rstrip(".").lower() for h in found} - {""}


# ---------------------------------------------------------------- webhooks: resolve, check, connect


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving each name once, refusing it if any address it
    resolves to is refused, and connecting to those addresses (in order, until one answers)."""

    def __init__(self, allowed: Sequence[IPNetwork], resolver: Resolver = anyio.getaddrinfo) -> None:
        self.allowed = tuple(allowed)
        self.resolver = resolver
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.resolve(host, port, timeout)
        for ip in addresses:
            if why := problem(ip, self.allowed):
                raise Refused(f"{host} is {why}" if literal(host) else f"{host} resolves to {ip}, {why}")
        failed: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for ip in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failed = exc
        assert failed is not None  # resolve() returns at least one address
        raise failed

    async def resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        """Every address `host` resolves to (an IP literal: itself), deduplicated, in order."""
        try:
            with anyio.fail_after(timeout):
                found = await self.resolver(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"cannot resolve {host}: no answer within {timeout:g}s") from None
        except OSError as exc:  # socket.gaierror: no such name, no DNS server...
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(sockaddr[0]) for *_, sockaddr in found))
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}: no address")
        return addresses

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise Refused("a Unix socket is never called")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def client(timeout: float, allowed: Sequence[IPNetwork], resolver: Resolver = anyio.getaddrinfo) -> httpx.AsyncClient:
    """An httpx client whose every connection goes through CheckedBackend. It uses no proxy from
    the environment (the address called must be the one checked) and follows no redirect; its
    certificates are httpx's (SSL_CERT_FILE / SSL_CERT_DIR, else certifi's)."""
    transport = httpx.AsyncHTTPTransport()
    # httpx builds its httpcore pool itself and takes no network backend: the pool is replaced
    # (tests/e2e/test_webhooks.py sees a loopback receiver refused, so a change in httpx fails there)
    limits = httpx.Limits()  # httpx's defaults, not httpcore's
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=CheckedBackend(allowed, resolver),
    )
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)
