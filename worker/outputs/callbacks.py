"""Which callback_urls a webhook may be sent to: a host of WEBHOOK_ALLOWED_HOSTS, and when the host
is an IP literal, an address the network policy allows (worker.calls.egress; a name is resolved,
and checked, when it is sent: worker.calls.pinned). The URL is read as the sender's HTTP client
(httpx) reads it: the host checked is the host called.

Producers refuse a job or batch naming another (worker.contract.records, worker.batches.format);
the sender (worker.outputs.webhooks) checks again before every try. Apart from the sender, so
that a producer's start-up imports none of the sender's client, metrics and batch records; and
httpx is imported when a URL is read, not with this module: its import is ~40 ms (httpcore, and
rich and click through httpx._main), and most jobs name no callback_url.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..calls import egress

if TYPE_CHECKING:
    from ..contract.settings import Settings

NETWORKS_FIX = "not called (WEBHOOK_ALLOWED_NETWORKS lists the non-public networks that may be)"


def allowed(url: str, hosts: list[str]) -> bool:
    """Whether `url`'s host is on the allow-list: `host` (any port), `host:port`, `*.domain` (its
    subdomains, not the domain itself); case-insensitive."""
    import httpx  # (here, not at the top: see the module's docstring)

    try:
        host, port = target(url)
    except httpx.InvalidURL:
        return False
    for entry in hosts:
        try:
            name, entry_port = egress.host_entry(entry)
        except ValueError:
            continue
        if entry_port is not None and entry_port != port:
            continue
        if host == name or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


def target(url: str) -> tuple[str, int]:
    """(host, port) httpx connects to for `url`; httpx.InvalidURL if it cannot send it."""
    import httpx  # (here, not at the top: see the module's docstring)

    parsed = httpx.URL(url)
    return parsed.host.lower(), parsed.port or (443 if parsed.scheme == "https" else 80)


def refusal(url: str, settings: Settings) -> str | None:
    """Why a producer must refuse this callback_url, or None: its host is not on the allow-list,
    or is an IP address the network policy refuses (a name is resolved, and checked, when sent)."""
    if not allowed(url, settings.webhook_allowed_hosts):
        host = urlsplit(url).hostname
        if not settings.webhook_allowed_hosts:
            return "webhooks are off: no host is allowed (set WEBHOOK_ALLOWED_HOSTS, and WEBHOOK_SECRET on the workers)"
        return f"host {host!r} is not on WEBHOOK_ALLOWED_HOSTS: add it there, or use an allowed host"
    host, _port = target(url)
    ip = egress.literal(host)
    why = None if ip is None else egress.problem(ip, egress.networks(settings.webhook_allowed_networks))
    return f"host {host!r} is {why}: {NETWORKS_FIX}" if why else None
