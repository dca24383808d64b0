"""Start-up checks of what a process connects to, each problem said in one line with its fix.

Redis (REDIS_URL), for the worker, the ingress, the exporter and the operator verbs: one
connection and a PING, without the clients' retries (worker.contract.connections), so a wrong URL is
said within seconds, not after a minute of silent retries. A problem that only a change of
REDIS_URL (or of the server's configuration) fixes is *lasting*: a wrong or missing password,
`rediss://` at a plain-text Redis or `redis://` at a TLS one, an untrusted certificate, a port
that is not Redis's, a database number past the server's. Those stop the process (exit 2);
anything else (nothing listening yet, a name not resolving yet, no answer) is waited out by a
worker, saying so, as Redis may simply be starting.

The gateway (AISA_BASE_URL, AISA_API_KEY), for a worker: `GET {AISA_BASE_URL}/models`, which
costs nothing, tells a URL without `/v1` (404), a refused key (401/403) and a server that is
not an OpenAI-compatible API. It is only said: a worker carries on whatever the answer (an
outage of the gateway must not crash-loop a fleet; a 401/402 on a call pauses the queue).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    InvalidResponse,
    NoPermissionError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from ..calls import errors
from ..contract import connections
from ..contract.settings import ConfigError

if TYPE_CHECKING:
    from ..calls.client import AIsaClient

# One try: connect (TLS handshake included) and PING.
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Problem:
    text: str  # what is wrong and how to fix it
    lasting: bool  # retrying cannot fix it: a setting (or the server's configuration) must change


def redis_problem(url: str, timeout: float = PROBE_TIMEOUT_S) -> Problem | None:
    """None if Redis at REDIS_URL answers a PING, else what is wrong."""
    try:
        client = _probe_client(url, timeout)
        try:
            client.ping()
        finally:
            client.close()
    except ConfigError as exc:
        return Problem(str(exc).removeprefix("REDIS_URL: "), lasting=True)
    except (RedisError, OSError, TypeError, ValueError) as exc:
        return explain(url, exc, timeout)
    return None


def _probe_client(url: str, timeout: float) -> Redis:
    """A blocking client that tries once and gives up after `timeout`."""
    connections.check_url(url)
    once = {"socket_connect_timeout": timeout, "socket_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
    s = connections.sentinel_url(url)
    if s is None:
        return Redis.from_url(url, **once)
    sentinels, master = connections.sentinel_kwargs(s)
    sentinel = Sentinel(s.hosts, sentinel_kwargs={**sentinels, **once}, **{**master, **once})
    client: Redis = sentinel.master_for(s.service)
    return client


def explain(url: str, exc: BaseException, timeout: float = PROBE_TIMEOUT_S) -> Problem:
    """What a failure to use Redis at `url` means, and how to fix it. Never shows the password
    (redis-py's messages hold none; the URL is shown as its host and port only)."""
    where = _where(url)
    text = str(exc)
    tls = url.partition("://")[0] in ("rediss", "rediss+sentinel")
    if isinstance(exc, AuthenticationError):
        if "required" in text.lower():
            fix = "Redis at {w} wants a password and REDIS_URL gives none: REDIS_URL=redis://:PASSWORD@{w}/0"
        elif "no password is set" in text or "without any password" in text:
            fix = "Redis at {w} has no password but REDIS_URL gives one: take it out of REDIS_URL"
        else:
            fix = (
                "Redis at {w} refused REDIS_URL's password ({t}): put the right one in REDIS_URL"
                " (redis://:PASSWORD@host:port/0, or redis://USER:PASSWORD@... for an ACL user)"
            )
        return Problem(fix.format(w=where, t=text.rstrip(".")), lasting=True)
    if isinstance(exc, MasterNotFoundError):
        return Problem(
            f"no sentinel of REDIS_URL ({where}) names a master for {connections.sentinel_url(url).service!r}"  # type: ignore[union-attr]
            " (are the sentinels up, is the master's name right, does ?sentinel_password= match?)",
            lasting=False,
        )
    if isinstance(exc, TypeError | ValueError):  # redis-py's: an option it does not take, a port not a number
        return Problem(f"not a URL redis-py can use: {text}", lasting=True)
    if isinstance(exc, ResponseError) and "DB index is out of range" in text:
        return Problem(
            f"Redis at {where} has no database of REDIS_URL's number (the path /N; `databases` in redis.conf,"
            " 16 by default): use /0",
            lasting=True,
        )
    if isinstance(exc, NoPermissionError):
        return Problem(
            f"REDIS_URL's user may not run a command at {where} ({text}): grant it (ACL SETUSER ... +@all ~*)"
            " or use another user",
            lasting=True,
        )
    if isinstance(exc, ReadOnlyError):
        return Problem(f"Redis at {where} is a read-only replica: point REDIS_URL at the primary", lasting=True)
    if isinstance(exc, ResponseError):  # another command error: not a setting (e.g. a script's own error)
        return Problem(f"Redis at {where} refused a command: {text}", lasting=False)
    if isinstance(exc, InvalidResponse):
        return Problem(
            f"something answers at {where}, but not as Redis does ({text}): is REDIS_URL's port Redis's?", True
        )
    host, port = _host_port(url)
    if tls and "CERTIFICATE_VERIFY_FAILED" in text:
        reason = text.partition("certificate verify failed: ")[2].partition(" (")[0] or "not trusted"
        return Problem(
            f"TLS to {where}: the server's certificate is refused ({reason}): give its CA in REDIS_URL"
            " (?ssl_ca_certs=/path/ca.pem), or its host name as the certificate names it",
            lasting=True,
        )
    if host and tls and _speaks_plain_redis(host, port, timeout):
        return Problem(f"rediss:// (TLS) at {where}, which speaks plain Redis: use redis://", lasting=True)
    if host and not tls and _speaks_tls(host, port, timeout):
        return Problem(
            f"redis:// (plain text) at {where}, which speaks TLS: use rediss:// (with ?ssl_ca_certs=/path/ca.pem"
            " for a private CA)",
            lasting=True,
        )
    if "refused" in text.lower() or "Error 111 " in text:
        return Problem(f"nothing listens at {where} (connection refused): start Redis, or point REDIS_URL at it", False)
    if "Name or service not known" in text or "name resolution" in text or "nodename nor servname" in text:
        return Problem(f"the host of REDIS_URL ({where}) does not resolve: check its spelling", lasting=False)
    if isinstance(exc, RedisTimeoutError | TimeoutError | socket.timeout):
        return Problem(
            f"no answer from {where} in {timeout:g} s: a firewall, a wrong address, or Redis too busy to answer",
            lasting=False,
        )
    return Problem(f"cannot use Redis at {where}: {text}", lasting=False)


def _host_port(url: str) -> tuple[str | None, int]:
    """The one server of a redis:// or rediss:// URL (None for a unix socket or Sentinel)."""
    if url.partition("://")[0] not in ("redis", "rediss"):
        return None, 0
    try:
        parts = urlsplit(url)
        return parts.hostname, parts.port or 6379
    except ValueError:
        return None, 0


def _where(url: str) -> str:
    """Where REDIS_URL points, without its password."""
    s = connections.sentinel_url(url) if "+sentinel" in url.partition("://")[0] else None
    if s is not None:
        return "sentinels " + ", ".join(f"{h}:{p}" for h, p in s.hosts)
    host, port = _host_port(url)
    if host is not None:
        return f"{host}:{port}"
    return urlsplit(url).path or url.partition("://")[0] + "://"


def _speaks_plain_redis(host: str, port: int, timeout: float) -> bool:
    """A plain-text PING gets a Redis reply (+PONG, or -NOAUTH...)."""
    try:
        with socket.create_connection((host, port), timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


def _speaks_tls(host: str, port: int, timeout: float) -> bool:
    """A TLS handshake succeeds (whatever the certificate)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout) as raw, context.wrap_socket(raw, server_hostname=host):
            return True
    except OSError:  # ssl.SSLError included
        return False


class _Waiting:
    """What a process waiting for Redis says: the problem at once, again when it changes and
    every `remind_s`; a lasting one is a ConfigError (the process exits 2 with it)."""

    def __init__(self, url: str, log: logging.Logger, retry_s: float, remind_s: float) -> None:
        self.url, self.log, self.retry_s, self.remind_s = url, log, retry_s, remind_s
        self.started, self.said, self.said_at = time.monotonic(), "", 0.0

    def failed(self, problem: Problem) -> None:
        if problem.lasting:
            raise ConfigError(f"REDIS_URL: {problem.text}")
        now = time.monotonic()
        if problem.text != self.said or now - self.said_at >= self.remind_s:
            waited = f" (for {now - self.started:.0f} s)" if self.said else ""
            self.log.warning("%s; retrying every %g s until it answers%s", problem.text, self.retry_s, waited)
            self.said, self.said_at = problem.text, now

    def answered(self) -> None:
        if self.said:
            self.log.warning("Redis at %s answers after %.0f s", _where(self.url), time.monotonic() - self.started)


def wait_for_redis(url: str, log: logging.Logger, retry_s: float = 2.0, remind_s: float = 30.0) -> None:
    """Return once Redis answers, saying meanwhile what is wrong (see _Waiting)."""
    waiting = _Waiting(url, log, retry_s, remind_s)
    while (problem := redis_problem(url)) is not None:
        waiting.failed(problem)
        time.sleep(retry_s)
    waiting.answered()


async def await_redis(
    url: str,
    log: logging.Logger,
    retry_s: float = 2.0,
    remind_s: float = 30.0,
    tick: Callable[[], None] | None = None,
) -> None:
    """wait_for_redis in an event loop (a signal stops it); `tick` after each try (the liveness probe)."""
    waiting = _Waiting(url, log, retry_s, remind_s)
    while (problem := await asyncio.to_thread(redis_problem, url)) is not None:
        waiting.failed(problem)
        if tick is not None:
            tick()
        await asyncio.sleep(retry_s)
    waiting.answered()


async def gateway_problem(client: AIsaClient, base_url: str) -> str | None:
    """None if `GET {AISA_BASE_URL}/models` lists models with the key, else what is wrong (it
    costs nothing: no call is billed)."""
    url = base_url.rstrip("/") + "/models"
    try:
        await client.models()
    except errors.APIStatusError as exc:
        if exc.status == 404:
            return await _no_models_list(client, base_url)
        if exc.status in (401, 403):
            return f"AISA_API_KEY: the gateway at {base_url} refused the key ({exc}): set the key AIsa gave you"
        return f"the gateway at {base_url} answers GET {url} with {exc}: calls may fail until it recovers"
    except errors.MalformedResponseError as exc:
        return (
            f"AISA_BASE_URL: GET {url} is not an OpenAI-compatible models list ({exc}): is it the API's"
            " root (https://api.aisa.one/v1), not a web page?"
        )
    except errors.AIsaError as exc:  # no answer: jobs retry with backoff, the circuits open
        return _unreachable(base_url, exc)
    return None


async def _no_models_list(client: AIsaClient, base_url: str) -> str | None:
    """GET /models answered 404: a server without a models list is fine if it has the chat path."""
    base = base_url.rstrip("/")
    try:
        status = await client.chat_path_status()
    except errors.AIsaError as exc:
        return _unreachable(base_url, exc)
    if status not in (404, 405):
        return None
    fix = (
        f"add /v1: AISA_BASE_URL={base}/v1"
        if not base.endswith("/v1")
        else "is it the API's root, as https://api.aisa.one/v1?"
    )
    return (
        f"AISA_BASE_URL: GET {base}/models and POST {base}/chat/completions answer {status}, so every call would: {fix}"
    )


def _unreachable(base_url: str, exc: errors.AIsaError) -> str:
    return f"cannot reach the gateway at {base_url} ({exc}): check AISA_BASE_URL and the network; jobs will retry"


async def check_gateway(client: AIsaClient, base_url: str, log: logging.Logger) -> None:
    """Say at start-up what is wrong with the gateway's URL or key; the worker carries on either way."""
    problem = await gateway_problem(client, base_url)
    if problem is not None:
        log.warning("gateway check: %s (the worker runs on; a 401/402 on a call pauses the queue)", problem)
    else:
        log.info("gateway check: %s lists models with the key", base_url)
