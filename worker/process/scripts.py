"""Lua scripts sent together: several EVALSHAs in one round trip, and all of a worker's scripts
loaded once at start-up.

redis-py's own way (a Script called on a pipeline) asks `SCRIPT EXISTS` first, a round trip of
its own each time, and a plain Script call that meets a Redis without the script (restarted,
or `SCRIPT FLUSH`) answers NOSCRIPT and loads it: a thousand jobs starting at once would load
each script a thousand times. Here every script is loaded at start-up and a pipeline of
EVALSHAs is sent as one write. A call Redis did not run, answering NOSCRIPT (it lost its
scripts) or LOADING (it is reading its data back after a restart), is sent again through the
Script (which loads the script, and retries LOADING as any single command does), and so is
every call after it if `rerun_rest` (for scripts that only make sense after the one before, and
are idempotent). A call that ran is never sent twice by this module; the client's own retry on a
connection error (worker.contract.connections) does send again a pipeline whose answers were lost, so
the job path's scripts take a second run: a claim hands over the same jobs, and a result,
release, call record, budget reservation, limiter settlement or recent-jobs entry is written
once (a result's store finds the same result stored and does nothing more; a cache lookup that
took the lead finds its own lock and leads again). Not quite all: a second run of the admission
books one more rate-limit slot, and of a cache hit counts its saving twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import SentinelManagedConnection
from redis.commands.core import AsyncScript
from redis.exceptions import BusyLoadingError, NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from ..contract.connections import FollowMaster, NoReplicas, pack_commands
from .held import HeldConnections, from_pool

# What Redis answers to a call it did not run.
NOT_RUN = (NoScriptError, BusyLoadingError)
ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]  # script, keys, args


def run_scripts(redis: Redis, calls: Sequence[ScriptCall], *, rerun_rest: bool = False) -> Awaitable[list[Any]]:
    """The answers of `calls`, in order, sent in one round trip (not atomically: each script is).
    On a client given a `Batcher` (`batch_calls`), the calls go out with every other job's calls
    of the same event-loop turn, and this is the Batcher's future for them (sent from now on;
    no coroutine of its own, and `asyncio.shield` of it makes no task); else a coroutine."""
    batcher: Batcher | None = getattr(redis, BATCHER_ATTR, None)
    if batcher is not None:
        return batcher.submit(calls, rerun_rest)
    return _run(redis, calls, rerun_rest)


async def _run(redis: Redis, calls: Sequence[ScriptCall], rerun_rest: bool) -> list[Any]:
    return await _finish(calls, await _send(redis, calls), rerun_rest)


async def _send(redis: Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """The answers of `calls` (an error reply as its exception, in its place), as redis-py's
    pipeline (`raise_on_error=False`) answers them, without its command stack, response callbacks
    and a parse call a reply: the calls packed as one write, sent on one connection and their
    replies read from the connection's parser. The connection is one the client's Batcher holds
    (worker.process.held) if it has a Batcher and a connection fit, else the pool's. A connection
    error is retried as the connection's `retry` says (the whole write again, as the pipeline
    does); on any exception (a cancellation included) the connection is closed and goes back to
    the pool, never held or handed back with replies unread."""
    if not calls:
        return []
    batcher: Batcher | None = getattr(redis, BATCHER_ATTR, None)
    held = batcher.held if batcher is not None else None
    pool = redis.connection_pool
    connection = await (held.take() if held is not None else from_pool(pool))
    answered = False
    try:
        packed = pack_commands(connection, [("EVALSHA", s.sha, len(k), *k, *a) for s, k, a in calls])
        answers = await connection.retry.call_with_retry(
            lambda: _exchange(connection, packed, len(calls)), lambda error: _drop(connection, error)
        )
        answered = True
        return answers
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    finally:
        if answered and held is not None:
            await held.give(connection)
        else:
            await pool.release(connection)


async def _drop(connection: AbstractConnection, error: BaseException) -> None:
    """Before a retry: the connection closed (as the pipeline's `_disconnect_raise_reset`), and an
    error the connection does not retry raised."""
    await connection.disconnect()
    if connection.retry_on_error is None or not isinstance(error, tuple(connection.retry_on_error)):
        raise error


# Connection classes whose `read_response` this module repeats for a reply already parsed (below)
_READS = {AbstractConnection.read_response, SentinelManagedConnection.read_response, FollowMaster.read_response}


async def _exchange(connection: AbstractConnection, packed: bytes, n: int) -> list[Any]:
    await connection.send_packed_command(packed)
    parser = connection._parser
    if not isinstance(parser, _AsyncHiredisParser) or type(connection).read_response not in _READS:
        return [await _read(connection) for _ in range(n)]
    answers: list[Any] = []
    reader: Any = parser._reader  # a new one at each connect; none can happen in this exchange
    append, gets = answers.append, reader.gets
    for _ in range(n):
        # a reply hiredis has whole is taken from it; else the connection reads (its timeout,
        # closing on an error), as `read_response` would
        reply = gets() if parser._connected else NOT_ENOUGH_DATA
        if reply is NOT_ENOUGH_DATA:
            reply = await _read(connection)
        elif isinstance(reply, Exception):  # an error reply (the hiredis parser's parse_error)
            await _refused(connection, reply)
        elif type(reply) is list and reply and isinstance(reply[0], RedisConnectionError):
            await _refused(connection, reply[0])
        append(reply)
    if connection.health_check_interval:
        connection.next_health_check = asyncio.get_running_loop().time() + connection.health_check_interval
    return answers


async def _read(connection: AbstractConnection) -> Any:
    try:
        return await connection.read_response()
    except ResponseError as exc:  # NoReplicas and the Sentinel's "now a slave" are connection errors
        return exc


async def _refused(connection: AbstractConnection, error: Exception) -> None:
    """What the connection's `read_response` makes of an error reply: a connection error (the
    hiredis parser's for "max number of clients") raised, the connection closed; on a Sentinel's
    connection, a master demoted (READONLY) and, on FollowMaster, NOREPLICAS become connection
    errors, retried. Any other stays the caller's answer."""
    if isinstance(error, RedisConnectionError):
        await connection.disconnect(nowait=True)
        raise error
    if not isinstance(connection, SentinelManagedConnection):
        return
    if isinstance(error, ReadOnlyError) and connection.connection_pool.is_master:
        await connection.disconnect()
        raise RedisConnectionError("The previous master is now a slave")
    if isinstance(connection, FollowMaster) and str(error).startswith("NOREPLICAS"):
        raise NoReplicas(str(error)) from error


async def _finish(calls: Sequence[ScriptCall], answers: list[Any], rerun_rest: bool) -> list[Any]:
    """Send again what Redis did not run; raise what it refused."""
    rerun = False
    for i, (answer, (script, keys, args)) in enumerate(zip(answers, calls, strict=True)):
        if isinstance(answer, NOT_RUN) or (rerun and rerun_rest):
            rerun = True
            answers[i] = await script(keys=keys, args=args)
        elif isinstance(answer, Exception):
            raise answer
    return answers


BATCHER_ATTR = "_llm_router_batcher"


class Batcher:
    """Script calls of many jobs sent together: the calls made in one event-loop turn go out as
    one pipeline (one write, one read, one connection) instead of a round trip and a connection
    each. A worker with a thousand calls in flight finishes them in bursts: this turns a burst's
    thousands of round trips into a few. Each call is still its own script (atomic), answered
    to its caller alone, and sent exactly as `run_scripts` would."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.held = HeldConnections(redis.connection_pool)  # the batches' connections between batches
        self._pending: list[tuple[Sequence[ScriptCall], bool, asyncio.Future[list[Any]]]] = []

    def submit(self, calls: Sequence[ScriptCall], rerun_rest: bool) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append((calls, rerun_rest, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        _flushing.add(task)
        task.add_done_callback(_flushing.discard)

    async def _send(self, batch: list[tuple[Sequence[ScriptCall], bool, asyncio.Future[list[Any]]]]) -> None:
        flat = [call for calls, _, _ in batch for call in calls]
        try:
            answers = await _send(self.redis, flat)
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        at = 0
        if not any(isinstance(answer, Exception) for answer in answers):  # as `_finish` answers them
            for calls, _, future in batch:
                mine, at = answers[at : at + len(calls)], at + len(calls)
                if not future.done():
                    future.set_result(mine)
            return
        for calls, rerun_rest, future in batch:
            mine, at = answers[at : at + len(calls)], at + len(calls)
            try:
                result = await _finish(calls, mine, rerun_rest)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)


# Flushes in flight (a task must be referenced until it ends).
_flushing: set[asyncio.Task[None]] = set()


def batch_calls(redis: Redis) -> None:
    """Send this client's `run_scripts` calls through a Batcher from now on."""
    setattr(redis, BATCHER_ATTR, Batcher(redis))


async def release_held(redis: Redis | None) -> None:
    """The connections this client's Batcher holds back to its pool, and none held from now on
    (the worker's shutdown, before its pool is closed)."""
    batcher: Batcher | None = getattr(redis, BATCHER_ATTR, None)
    if batcher is not None:
        await batcher.held.close()


async def preload(redis: Redis, scripts: Iterable[AsyncScript]) -> None:
    """Load every script once (SCRIPT LOAD is idempotent), so no call meets NOSCRIPT at start-up."""
    for script in scripts:
        script.sha = await redis.script_load(script.script)
