"""Redis connections from REDIS_URL, for every process: workers (arq's pool), producers, the
ingress and the exporter. Three kinds of URL:

- `redis://[:password@]host:6379/0`: one Redis (redis-py's URL, query options included);
- `rediss://[:password@]host:6380/0[?ssl_ca_certs=/ca.pem]`: TLS, as managed Redis offers it;
- `redis+sentinel://[:password@]host1:26379[,host2:26379,...]/mymaster[/0]`: Redis with
  Sentinel: the client asks the sentinels for the master of `mymaster` and asks again after a
  failover (`rediss+sentinel://` for TLS). `?sentinel_password=...` when the sentinels
  require one (the password of the userinfo is the master's).

A worker retries a command on connection errors for about a minute (a restart, a failover),
with backoff, and says in its log when Redis is lost and when it answers again (SayingRetry);
so does every client of a Sentinel URL (a failover takes seconds). A producer on a plain URL
fails at once, as before, after at most CONNECT_TIMEOUT_S (the CLI says what is wrong:
worker.process.preflight).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote

from arq.connections import ArqRedis, RedisSettings
from redis import Redis as SyncRedis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.connection import Connection as _PlainConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import AuthenticationError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry
from redis.sentinel import Sentinel as SyncSentinel
from redis.sentinel import SentinelManagedConnection as SyncSentinelManagedConnection

from .settings import ConfigError

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
# ReadOnlyError: a client still on a demoted master; the retry reconnects to the new one
RETRY_ON = [RedisConnectionError, RedisTimeoutError, ConnectionRefusedError, ReadOnlyError]
T = TypeVar("T")
log = logging.getLogger("llm_router.redis")
# A client that does not say otherwise gives up connecting after this (redis-py's default: never,
# and `rediss://` at a plain-text Redis hangs in the TLS handshake)
CONNECT_TIMEOUT_S = 5.0
TLS_OPTIONS = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")


@dataclass
class SentinelUrl:
    hosts: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_password: str | None = None
    tls_options: dict[str, Any] = field(default_factory=dict)


def sentinel_url(url: str) -> SentinelUrl | None:
    """The parts of a `redis+sentinel://` URL; None for any other URL; ConfigError if malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SENTINEL_SCHEMES:
        return None
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if at else ("", "", "")
    parts = [p for p in path.split("/") if p]
    try:
        hosts = [
            (h.rpartition(":")[0] or h, int(h.rpartition(":")[2]) if ":" in h else 26379) for h in hostlist.split(",")
        ]
        db = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        hosts, db = [], -1
    if not all(h for h, _ in hosts) or len(parts) not in (1, 2) or db < 0:
        raise ConfigError(
            f"REDIS_URL: {scheme}:// needs sentinels and the master's name: "
            f"{scheme}://[:password@]host1:26379[,host2:26379,...]/mymaster[/db]"
        )
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    return SentinelUrl(
        hosts=hosts,
        service=parts[0],
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        tls=SENTINEL_SCHEMES[scheme],
        sentinel_password=options.get("sentinel_password"),
        tls_options={k: _option(v) for k, v in options.items() if k in TLS_OPTIONS},
    )


def _option(value: str) -> Any:
    return {"true": True, "false": False}.get(value.lower(), value)


def check_url(url: str) -> None:
    """A ConfigError naming the schemes for a URL of none of them."""
    scheme = url.partition("://")[0]
    if scheme not in ("redis", "rediss", "unix") and scheme not in SENTINEL_SCHEMES:
        raise ConfigError(
            f"REDIS_URL: unknown scheme {scheme!r}: use redis://, rediss:// (TLS) or redis+sentinel:// (Sentinel)"
        )


class NoReplicas(RedisConnectionError):
    """NOREPLICAS: a master with `min-replicas-to-write` has no replica in sync (just after a
    failover, until the old master rejoins): no write was applied, retried like a lost connection."""


class FollowMaster(SentinelManagedConnection):
    """A connection to the master that asks the sentinels again on every retry. redis-py's
    retries the connect to the address it was given: a dead master's, until a process comes
    back there (a restarted pod, empty and briefly a master itself), and writes go to it."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if str(exc).startswith("NOREPLICAS"):
                raise NoReplicas(str(exc)) from exc
            raise

    async def connect_to(self, address: tuple[str, int]) -> None:
        retry, self.retry = self.retry, Retry(NoBackoff(), 0)
        try:
            await super().connect_to(address)
        finally:
            self.retry = retry


class SyncFollowMaster(SyncSentinelManagedConnection):
    """FollowMaster for the blocking client."""

    def connect_to(self, address: tuple[str, int]) -> None:
        retry, self.retry = self.retry, SyncRetry(NoBackoff(), 0)
        try:
            super().connect_to(address)
        finally:
            self.retry = retry


class SayingRetry(Retry):
    """redis-py's Retry (the same loop), which also says in the log when Redis is lost (at the
    second failed try of a command in a row: one reconnect after Redis closed an idle connection
    is not worth a line) and when it answers again; and which never retries a refused password,
    which no retry heals. Without it a worker rode out an outage for a minute in silence."""

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[[Any], Any]) -> T:
        self._backoff.reset()
        failures = 0
        while True:
            try:
                result = await do()
            except self._supported_errors as error:
                if isinstance(error, AuthenticationError):
                    raise
                failures += 1
                await fail(error)
                if failures == 2:
                    OUTAGE.lost(error)
                if self._retries >= 0 and failures > self._retries:
                    raise error
                backoff = self._backoff.compute(failures)
                if backoff > 0:
                    await asyncio.sleep(backoff)
            else:
                if failures >= 2:
                    OUTAGE.back()
                return result


class Outage:
    """One line when Redis is lost, one when it is back: not one per command retrying."""

    def __init__(self) -> None:
        self.since: float | None = None

    def lost(self, error: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("Redis lost (%s): retrying each command for about a minute (REDIS_URL)", error)

    def back(self) -> None:
        if self.since is not None:
            log.warning("Redis answers again after %.1f s", time.monotonic() - self.since)
            self.since = None


OUTAGE = Outage()


def _pack_command_hiredis(self: AbstractConnection, *args: Any) -> list[bytes]:
    """redis-py's asyncio `pack_command`, byte for byte, in hiredis's C packer: its pure-Python
    one encodes and joins argument by argument, about 8 µs a script call of 15 arguments (a
    worker sends five a job); this is about 1.4 µs. redis-py's blocking client packs with hiredis
    the same way (`HiredisRespSerializer`). A command hiredis does not take (an argument of
    another type: redis-py's own packer raises its DataError) or a client with another encoding
    goes through redis-py's packer."""
    encoder = self.encoder
    if encoder.encoding in ("utf-8", "utf8") and encoder.encoding_errors == "strict":
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [_hiredis_pack(args)]
        except TypeError:
            pass
    return _python_pack(self, *args)


_python_pack = _PlainConnection.pack_command
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # hiredis is a dependency (redis[hiredis]); without it, redis-py's packer
    pass
else:
    AbstractConnection.pack_command = _pack_command_hiredis  # type: ignore[method-assign]


def pack_commands(connection: AbstractConnection, commands: Sequence[tuple[Any, ...]]) -> bytes:
    """`commands` packed as one write, the same bytes as redis-py's `pack_commands` (which joins
    its chunks argument by argument in Python): each command's name one word (`EVALSHA`, not
    `SCRIPT LOAD`). With hiredis's packer in place, one C call a command and one join; a packer
    replaced since (a test counting commands) or a command hiredis does not take goes through the
    connection's `pack_command`, command by command."""
    encoder = connection.encoder
    if (
        type(connection).pack_command is _pack_command_hiredis
        and encoder.encoding in ("utf-8", "utf8")
        and encoder.encoding_errors == "strict"
    ):
        try:
            return b"".join(map(_hiredis_pack, commands))
        except TypeError:
            pass
    return b"".join([chunk for command in commands for chunk in connection.pack_command(*command)])


def _retry() -> Retry:
    return SayingRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=40)


def sentinel_kwargs(s: SentinelUrl) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the sentinels' connection options, the master's)."""
    tls = {"ssl": True, **s.tls_options} if s.tls else {}
    sentinels = {"socket_connect_timeout": 2, "socket_timeout": 2, "password": s.sentinel_password, **tls}
    master = {"db": s.db, "username": s.username, "password": s.password, "socket_connect_timeout": 2, **tls}
    return sentinels, master


def async_redis(url: str, **kwargs: Any) -> Redis:
    """An asyncio client for REDIS_URL (a Sentinel URL follows the master)."""
    check_url(url)
    s = sentinel_url(url)
    if s is None:
        return Redis.from_url(url, **{"socket_connect_timeout": CONNECT_TIMEOUT_S, **kwargs})
    sentinels, master = sentinel_kwargs(s)
    sentinel = Sentinel(s.hosts, sentinel_kwargs=sentinels, retry=_retry(), retry_on_error=RETRY_ON, **master)
    client: Redis = sentinel.master_for(s.service, connection_class=FollowMaster, **kwargs)
    return client


class WaitingPool(ConnectionPool):
    """At most `max_connections` connections; a command that finds none free waits for one, up to
    `timeout` seconds (then ConnectionError). redis-py's BlockingConnectionPool does the same with
    a Condition and a timeout around every checkout and release: measured ~25 µs more CPU a
    command in the ingress (bench/ingress.py) than this semaphore, timed only when it must wait."""

    def __init__(self, *, max_connections: int, timeout: float | None = 20, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self._slots = asyncio.Semaphore(max_connections)
        self._held: set[AbstractConnection] = set()
        self._wait_s = timeout

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> AbstractConnection:
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._wait_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise RedisConnectionError("No connection available.") from None
        else:
            await self._slots.acquire()
        try:
            if command_name is None and not keys and not options:  # redis-py >= 5.3 passes nothing
                connection = await super().get_connection()
            else:
                connection = await super().get_connection(command_name, *keys, **options)
        except BaseException:
            self._slots.release()
            raise
        self._held.add(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        await super().release(connection)
        if connection in self._held:
            self._held.discard(connection)
            self._slots.release()


def async_pool_redis(url: str, max_connections: int, **kwargs: Any) -> Redis:
    """A client whose pool holds at most `max_connections` (waiting for a free one), for the ingress."""
    check_url(url)
    if sentinel_url(url) is not None:  # Sentinel's pool does not block: past the bound, an error
        kwargs.pop("timeout", None)
        return async_redis(url, max_connections=max_connections, **kwargs)
    return Redis(connection_pool=WaitingPool.from_url(url, max_connections=max_connections, **kwargs))


def sync_redis(url: str, **kwargs: Any) -> SyncRedis:
    """A blocking client (the exporter's)."""
    check_url(url)
    s = sentinel_url(url)
    if s is None:
        return SyncRedis.from_url(url, **{"socket_connect_timeout": CONNECT_TIMEOUT_S, **kwargs})
    sentinels, master = sentinel_kwargs(s)
    retry = SyncRetry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)  # a scrape is retried by the next
    sentinel = SyncSentinel(s.hosts, sentinel_kwargs=sentinels, retry=retry, retry_on_error=RETRY_ON, **master)
    client: SyncRedis = sentinel.master_for(s.service, connection_class=SyncFollowMaster, **kwargs)
    return client


def arq_settings(url: str) -> RedisSettings:
    """arq's RedisSettings for REDIS_URL: riding out a restart for about a minute."""
    check_url(url)
    s = sentinel_url(url)
    if s is None:
        rs = RedisSettings.from_dsn(url)
        options = {k: _option(v[-1]) for k, v in parse_qs(url.partition("?")[2]).items() if k in TLS_OPTIONS}
        for name, value in options.items():
            setattr(rs, name, value)
    else:
        rs = RedisSettings(
            host=s.hosts,
            sentinel=True,
            sentinel_master=s.service,
            database=s.db,
            username=s.username,
            password=s.password,
            ssl=s.tls,
        )
    rs.conn_retries = 30
    rs.retry_on_error = RETRY_ON
    rs.retry = _retry()
    return rs


def arq_pool(url: str) -> ArqRedis | None:
    """For a Sentinel URL, the worker's own pool: arq's create_pool passes no retry options to
    Sentinel's connections, and a worker must ride out a failover. None for other URLs (arq
    builds its pool from `arq_settings`)."""
    s = sentinel_url(url)
    if s is None:
        return None
    sentinels, master = sentinel_kwargs(s)
    sentinel = Sentinel(s.hosts, sentinel_kwargs=sentinels, retry=_retry(), retry_on_error=RETRY_ON, **master)
    pool: ArqRedis = sentinel.master_for(s.service, redis_class=ArqRedis, connection_class=FollowMaster)
    return pool
