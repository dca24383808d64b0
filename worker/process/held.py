"""The few connections a client's Batcher (worker.process.scripts) keeps between its batches,
instead of taking one from redis-py's pool and handing it back for every batch.

The pool's `get_connection` takes an asyncio lock and checks the connection it hands out
(`ensure_connection`): on the hiredis parser, a read under `async_timeout(0)`, that is a timer,
a suspension until the next loop turn and a TimeoutError for every batch; its `release` awaits
an event dispatch. A worker sends a batch every loop turn or two: `get_connection` was ~4.6 %
of its CPU (py-spy, bench.dispatch) and a loop turn of latency a batch. A held connection is checked
here without a suspension, from what the event loop has already delivered to it: its stream
reader at EOF, holding data or an error (Redis restarted, CLIENT KILL, the server's `timeout`),
its transport closing, its hiredis reader holding a reply, it not connected (the pool's
`disconnect`: a client's `aclose`), or, on a Sentinel master's pool, an address that is no
longer the master's (the pool closes its idle connections when it learns of a new master; a
held one is not idle to it). Any doubt and the connection goes back to the pool, whose full
path (check, reconnect) gives the batch one, as before. What this cannot see, a close that
reaches the socket in the very turn the batch is sent, the pool's one-turn poll could miss too:
the write meets a closed connection, a connection error, retried (the worker's clients) on a
new one, where nothing ran. A `health_check_interval` still PINGs a connection idle past it
(`send_packed_command`); redis-py's asyncio pool has no fork check to keep.

Held connections stay checked out of the pool, so they count against its `max_connections`
as a batch in flight did. At most `most` are held idle (batches overlap: one in flight while the
next is sent, sometimes three), and none that would leave the pool without one to give (a
client built with a finite `max_connections`: the worker's arq pool takes none from REDIS_URL, so
this guards other clients given a Batcher); any more go back to the pool. A connection comes back
here only after a batch read every reply; on any exception it is closed and goes back to the
pool (worker.process.scripts). `close` hands them all back (the worker's shutdown); after it,
each goes back after its batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable

from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import SentinelConnectionPool

# Idle connections held. bench.dispatch (50 in flight): with 2, 5.7 % of batches found none
# held and took the pool's path; with 3, 1.2 %.
MOST = 3


class HeldConnections:
    def __init__(self, pool: ConnectionPool, most: int = MOST) -> None:
        self.pool = pool
        self.most = most
        self.idle: list[AbstractConnection] = []
        self.closed = False

    async def take(self) -> AbstractConnection:
        """A held connection fit for a batch, else the pool's (its full path), after handing back
        the held ones in doubt (a Sentinel master's old address closed first, as the pool would
        have closed it idle)."""
        idle, pool = self.idle, self.pool
        while idle:
            connection = idle.pop()
            if _fit(connection, pool):
                return connection
            try:
                if _stale_master(connection, pool):
                    await connection.disconnect()
            finally:
                await pool.release(connection)
        return await from_pool(pool)

    async def give(self, connection: AbstractConnection) -> None:
        """A connection whose batch read every reply: held, or back to the pool (also when holding
        it would leave the pool none to give: a client's other commands must still find one)."""
        pool = self.pool
        if (
            not self.closed
            and len(self.idle) < self.most
            and len(pool._in_use_connections) < pool.max_connections
            and isinstance(connection._parser, _AsyncHiredisParser)
        ):
            self.idle.append(connection)
        else:
            await self.pool.release(connection)

    async def close(self) -> None:
        """Every held connection back to the pool (which the client's `aclose` closes), and none
        held from now on."""
        self.closed = True
        while self.idle:
            await self.pool.release(self.idle.pop())


def from_pool(pool: ConnectionPool) -> Awaitable[AbstractConnection]:
    """A connection from the pool's full path (its lock, its check, a connect if need be)."""
    return pool.get_connection() if _NO_NAME else pool.get_connection("EVALSHA")


# redis-py >= 5.3 takes no command name (and warns at one); before, it must have one
_NO_NAME = inspect.signature(ConnectionPool.get_connection).parameters["command_name"].default is None


def _fit(connection: AbstractConnection, pool: ConnectionPool) -> bool:
    """Connected, nothing to read, nothing closed, and to the master the pool knows: what the
    event loop has delivered to the connection says so (no read, no suspension)."""
    reader, writer, parser = connection._reader, connection._writer, connection._parser
    if reader is None or writer is None or not isinstance(parser, _AsyncHiredisParser):
        return False
    if reader._buffer or reader.at_eof() or reader.exception() is not None or writer.is_closing():  # type: ignore[attr-defined]
        return False
    if not parser._connected or parser._reader is None or parser._reader.has_data():
        return False
    return not _stale_master(connection, pool)


def _stale_master(connection: AbstractConnection, pool: ConnectionPool) -> bool:
    return (
        isinstance(pool, SentinelConnectionPool)
        and pool.is_master
        and (connection.host, connection.port) != pool.master_address  # type: ignore[attr-defined]
    )
