"""Outbound requests a client can aim, and the addresses they may reach: a webhook's
callback_url (called by the workers) and an image URL (fetched by the upstream, which may be a
self-hosted server inside the workers' own network).

Refused unless the operator allows them: every address that is not public unicast (ipaddress's
`is_global`: loopback, private, link-local, unspecified, shared, reserved, documentation...) and
multicast, also when an IPv6 address embeds one (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
`::a.b.c.d`, 6to4 `2002::/16`, NAT64 `64:ff9b::/96`).

Webhooks: the name is resolved when the request is sent, every address it resolves to is
checked, and the connection goes to a checked address, the name kept in the Host header and TLS
SNI (worker.calls.pinned): no second lookup, so no DNS answer can change between the check and
the call. WEBHOOK_ALLOWED_NETWORKS allows networks (e.g. a cluster's service network).

Image URLs are not fetched here, so not resolved: a host that is a non-public IP literal (in any
form a resolver reads: `2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`, `[::ffff:127.0.0.1]`,
`[64:ff9b::a00:1]`, full-width digits...) or a name of this side's own network (`internal_name`:
`localhost`, `*.local`, `*.internal` such as `metadata.google.internal`, a single label...) is
refused unless IMAGE_URLS_ALLOW_PRIVATE is set.

The policy only, on the standard library: the settings check their entries with it and producers
their jobs' URLs, so a producer's start-up imports no HTTP client. httpx is imported where a URL
is read as it reads it (`_hosts`), when a job names an image URL: its import is ~40 ms (httpcore,
and rich and click through httpx._main), more than a tenth of `llm-router chat`'s start-up.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import unquote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# Names that lead into the network of whoever resolves them, whatever public DNS says: localhost
# (RFC 6761), mDNS's .local (RFC 6762; Kubernetes' cluster.local), the private-use names RFC 6762
# Appendix G lists (intranet, internal - ICANN's since 2024: GCP's metadata.google.internal -,
# private, corp, home, lan), localdomain, home.arpa (RFC 8375) and Kubernetes' <service>.<ns>.svc.
INTERNAL_DOMAINS = (
    "localhost",
    "local",
    "localdomain",
    "internal",
    "intranet",
    "private",
    "corp",
    "home",
    "lan",
    "home.arpa",
    "svc",
)
# what inet_aton reads as an IPv4 address: 1-4 parts, decimal, octal (0...) or hex (0x...)
_IPV4_ISH = re.compile(r"^[0-9a-fx.]+$")


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
    for inner in (ip.ipv4_mapped, ip.sixtofour, ip.teredo and ip.teredo[1]):  # (teredo: server, client)
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


def host_entry(entry: str) -> tuple[str, int | None]:
    """(host, port or None) of an allow-list entry: `host`, `host:port`, `[v6]:port`, `*.domain`;
    ValueError if it is none of those (WEBHOOK_ALLOWED_HOSTS)."""
    try:
        parts = urlsplit("//" + entry.strip().lower())
        host, port = parts.hostname or "", parts.port
    except ValueError:  # a port that is not a number, or past 65535
        host, port = "", None
    if not host or entry != entry.strip() or "/" in entry or "@" in entry:
        raise ValueError(
            f"{entry!r} is not a host name: use e.g. hooks.example.com, hooks.example.com:8443 or *.example.com"
        )
    return host, port


# ---------------------------------------------------------------- image URLs


def image_url_problem(url: str) -> str | None:
    """Why an http(s) image URL is refused (its host is a non-public IP literal or a name of this
    side's own network), or None."""
    for host in _hosts(url):
        ip = literal(host)
        why = problem(ip) if ip is not None else internal_name(host)
        if why:
            return f"its host {host!r} is {why}"
    return None


def internal_name(host: str) -> str | None:
    """Why a host name (not an IP literal) leads into the resolver's own network, or None."""
    name = host.strip("[]").rstrip(".").lower()
    for domain in INTERNAL_DOMAINS:
        if name == domain or name.endswith("." + domain):
            return f"a name of the local network ({domain}, *.{domain})"
    if "." not in name:  # completed with the resolver's search domains (`metadata`, `redis`...)
        return "a single-label name (one the resolver completes with its own search domains)"
    return None


def _hosts(url: str) -> set[str]:
    """The host of `url` as urllib and httpx read it and as a WHATWG parser (a browser, many HTTP clients)
    does (tab and newline dropped, `\\` ends the authority, percent-decoded, IDNA-mapped), each
    lower-case, without spaces, control characters or a trailing dot: a URL parsers disagree on
    is checked both ways."""
    found = set()
    try:
        found.add(urlsplit(url).hostname or "")
    except ValueError:
        pass
    import httpx  # (here, not at the top: see the module's docstring)

    try:  # as httpx (this project's client, and many upstreams') reads it
        found.add(httpx.URL(url).host)
    except httpx.InvalidURL:
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
