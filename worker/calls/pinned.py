"""The webhook client: httpx over an httpcore pool whose network backend resolves each name once,
refuses it if any address it resolves to is refused (worker.calls.egress's policy), and connects
to a checked address, the name kept in the Host header and TLS SNI: no second lookup, so no DNS
answer can change between the check and the call (DNS pinning).

Apart from the policy, which the settings and producers use at start-up, because this needs
anyio, httpcore and httpx: the workers' webhook sender (worker.outputs.webhooks) alone imports it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import anyio
import httpcore
import httpx

from .egress import IPAddress, IPNetwork, Refused, literal, problem

# anyio.getaddrinfo's signature: (host, port, *, type=...) -> [(family, type, proto, canonname, sockaddr)]
Resolver = Callable[..., Awaitable[list[tuple[Any, Any, int, str, tuple[Any, ...]]]]]


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
