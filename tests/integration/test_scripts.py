"""The batched script calls (worker.process.scripts) against a real redis-server: one write and one
read for a turn's calls, each caller answered (or refused) alone with the exception redis-py's
pipeline gives, NOSCRIPT run again, a connection killed mid-batch (CLIENT KILL) ridden out with
the worker's retry, a cancelled caller never leaving replies unread on a pooled connection, and
the error replies a connection turns into connection errors (a Sentinel's master demoted,
NOREPLICAS, "max number of clients"). Each test runs with the module's sender and with redis-py's
pipeline, the sender before it: the same answers, errors and writes.

A batch is held in the server with `CLIENT PAUSE ... WRITE`: a script that may write waits there
(the connection `flags=b`, `cmd=evalsha` in CLIENT LIST) until CLIENT UNPAUSE, so the tests kill
or cancel it at a known point, not after a sleep."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis, create_pool
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

from harness.command_count import RedisTraffic
from harness.redis_server import PrivateRedis
from harness.wait import wait_until_async
from worker.contract.connections import RETRY_ON, FollowMaster, NoReplicas, arq_settings
from worker.process import held, scripts, service
from worker.process.scripts import ScriptCall, preload, run_scripts

INCR = "return redis.call('INCR', KEYS[1])"
ECHO = "return ARGV[1]"
READ = "#!lua flags=no-writes\nreturn redis.call('GET', KEYS[1])"  # runs through a CLIENT PAUSE WRITE
FAIL = "return redis.error_reply(ARGV[1])"
WRONGTYPE = "return redis.call('LPUSH', KEYS[1], 'x')"


async def pipeline_send(redis: Redis, calls: list[ScriptCall]) -> list[Any]:
    """The sender before this module's own (bench/script_calls.py times both)."""
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


@pytest.fixture(autouse=True, params=["lean", "pipeline"])
def sender(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param == "pipeline":
        monkeypatch.setattr(scripts, "_send", pipeline_send)


@pytest.fixture
async def worker_redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    """A client as the worker's: arq's pool, the connections module's retry, batched calls."""
    client = await create_pool(arq_settings(redis_url))
    scripts.batch_calls(client)
    yield client
    await client.aclose()


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.execute_command("CLIENT", "UNPAUSE")
    await client.aclose()


async def held_in_server(admin: Redis) -> int:
    """Once a script call waits in the paused server: its connection's id."""

    async def paused() -> int | None:
        for client in await admin.client_list():
            if "b" in client["flags"] and client["cmd"] == "evalsha":
                return int(client["id"])
        return None

    return await wait_until_async(paused, 10, "a script call held by CLIENT PAUSE")


async def gather_in_one_turn(*calls: Any) -> list[Any]:
    return await asyncio.gather(*calls, return_exceptions=True)


async def test_each_caller_gets_its_answer_or_its_error_from_one_round_trip(worker_redis: ArqRedis, redis: Redis):
    incr, echo, fail, wrong = (worker_redis.register_script(s) for s in (INCR, ECHO, FAIL, WRONGTYPE))
    await preload(worker_redis, [incr, echo, fail, wrong])
    await redis.set("str", "a")
    with RedisTraffic() as traffic:
        answers = await gather_in_one_turn(
            run_scripts(worker_redis, [(incr, ["n"], []), (echo, [], ["a"])]),
            run_scripts(worker_redis, [(fail, [], ["ERR my own"])]),
            run_scripts(worker_redis, [(echo, [], ["b"]), (fail, [], ["READONLY demoted"])]),
            run_scripts(worker_redis, [(wrong, ["str"], [])]),
            run_scripts(worker_redis, [(incr, ["n"], []), (echo, [], [7])]),
        )
    assert traffic.round_trips == 1 and traffic.scripts[incr.sha] == 2, traffic.by_name
    assert answers[0] == [1, b"a"] and answers[4] == [2, b"7"]
    # the same exceptions, messages included, as redis-py's pipeline gives for the same calls
    async with redis.pipeline(transaction=False) as pipe:
        pipe.evalsha(fail.sha, 0, "ERR my own")
        pipe.evalsha(fail.sha, 0, "READONLY demoted")
        pipe.evalsha(wrong.sha, 1, "str")
        expected = await pipe.execute(raise_on_error=False)
    for got, want in zip(answers[1:4], expected, strict=True):
        assert type(got) is type(want) and str(got) == str(want), (got, want)
    assert isinstance(answers[2], ReadOnlyError) and type(answers[1]) is ResponseError
    assert await redis.get("n") == b"2"
    # the connection is still in step: the next batch gets its own answers
    assert await run_scripts(worker_redis, [(echo, [], ["c"])]) == [b"c"]


async def test_calls_redis_lost_are_loaded_and_run_again_once_each(worker_redis: ArqRedis, redis: Redis):
    incr, echo = worker_redis.register_script(INCR), worker_redis.register_script(ECHO)
    await preload(worker_redis, [incr, echo])
    await redis.script_flush()  # as after a restart
    answers = await gather_in_one_turn(
        run_scripts(worker_redis, [(incr, ["a"], []), (echo, [], ["x"])]),
        run_scripts(worker_redis, [(echo, [], ["y"])]),
        run_scripts(worker_redis, [(incr, ["b"], []), (echo, [], ["z"])], rerun_rest=True),
    )
    assert answers == [[1, b"x"], [b"y"], [1, b"z"]]
    await redis.script_flush()
    await redis.script_load(echo.script)  # the first unknown, the second known: with rerun_rest both again
    with RedisTraffic() as traffic:
        answers = await gather_in_one_turn(
            run_scripts(worker_redis, [(incr, ["a"], []), (echo, [], ["x"])]),
            run_scripts(worker_redis, [(incr, ["b"], []), (echo, [], ["z"])], rerun_rest=True),
        )
    assert answers == [[2, b"x"], [2, b"z"]]
    assert await redis.mget("a", "b") == [b"2", b"2"]
    assert traffic.scripts[echo.sha] == 3 and traffic.by_name["EVAL"] == 0, traffic.by_name


async def test_a_connection_killed_mid_batch_is_ridden_out_each_write_run_once(
    worker_redis: ArqRedis, redis: Redis, admin: Redis
):
    incr, read = worker_redis.register_script(INCR), worker_redis.register_script(READ)
    await preload(worker_redis, [incr, read])
    await redis.set("r", "v")
    await admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    # the first call runs (it does not write) and answers; the second waits in the server
    calls = asyncio.ensure_future(
        gather_in_one_turn(
            run_scripts(worker_redis, [(read, ["r"], [])]),
            run_scripts(worker_redis, [(incr, ["n"], [])]),
            run_scripts(worker_redis, [(read, ["r"], []), (incr, ["m"], [])]),
        )
    )
    connection = await held_in_server(admin)
    assert await admin.execute_command("CLIENT", "KILL", "ID", connection) == 1
    await admin.execute_command("CLIENT", "UNPAUSE")
    assert await calls == [[b"v"], [1], [b"v", 1]]  # the batch sent again on a new connection
    assert await redis.mget("n", "m") == [b"1", b"1"]


async def test_without_retries_every_caller_of_the_killed_batch_gets_the_connection_error(
    redis_url: str, redis: Redis, admin: Redis
):
    client = Redis.from_url(redis_url)  # a producer's: no retry
    scripts.batch_calls(client)
    incr = client.register_script(INCR)
    await preload(client, [incr])
    await admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    calls = asyncio.ensure_future(
        gather_in_one_turn(run_scripts(client, [(incr, ["n"], [])]), run_scripts(client, [(incr, ["m"], [])]))
    )
    await admin.execute_command("CLIENT", "KILL", "ID", await held_in_server(admin))
    await admin.execute_command("CLIENT", "UNPAUSE")
    answers = await calls
    assert all(type(answer) is RedisConnectionError for answer in answers), answers
    assert await redis.mget("n", "m") == [None, None]
    assert await run_scripts(client, [(incr, ["n"], [])]) == [1]  # the pool connects again
    await client.aclose()


@pytest.mark.parametrize("batched", [True, False])
async def test_a_cancelled_caller_leaves_no_reply_unread_on_the_connection(redis_url: str, admin: Redis, batched: bool):
    client = Redis.from_url(redis_url, max_connections=1)  # one connection: a stale reply would be read next
    if batched:
        scripts.batch_calls(client)
    echo = client.register_script("return ARGV[1] .. redis.call('INCR', KEYS[1])")
    await preload(client, [echo])
    await admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    cancelled = asyncio.ensure_future(run_scripts(client, [(echo, ["n"], ["first"])]))
    kept = asyncio.ensure_future(run_scripts(client, [(echo, ["n"], ["kept"])])) if batched else None
    await held_in_server(admin)
    cancelled.cancel()
    await admin.execute_command("CLIENT", "UNPAUSE")
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    if kept is not None:  # the others of its batch are still answered
        assert await kept == [b"kept2"]
    assert (await run_scripts(client, [(echo, ["n"], ["second"])]))[0].startswith(b"second")
    await client.aclose()


class OneMaster:
    """A sentinel manager naming one master: the real redis-server of the test."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        return self.address


async def test_error_replies_a_connection_makes_connection_errors_are_retried_then_raised(redis_url: str, redis: Redis):
    """A Sentinel master's connection (FollowMaster, as a worker's) given READONLY or NOREPLICAS,
    and any connection given "max number of clients": the whole batch again (one retry here),
    then every caller the connection error."""
    host, port = redis.connection_pool.connection_kwargs["host"], redis.connection_pool.connection_kwargs["port"]
    retry = {"retry": Retry(NoBackoff(), 1), "retry_on_error": RETRY_ON}
    pool = SentinelConnectionPool("mymaster", OneMaster((host, port)), connection_class=FollowMaster, **retry)
    sentinel = Redis(connection_pool=pool)
    plain = Redis.from_url(redis_url, **retry)
    refuse = "redis.call('INCR', KEYS[1]) return redis.error_reply(ARGV[1])"
    cases = [
        (sentinel, "READONLY You can't write against a read only replica.", RedisConnectionError),
        (sentinel, "NOREPLICAS Not enough good replicas to write.", NoReplicas),
        (plain, "ERR max number of clients reached", RedisConnectionError),
    ]
    for client, reply, error in cases:
        scripts.batch_calls(client)
        incr, refusing = client.register_script(INCR), client.register_script(refuse)
        await preload(client, [incr, refusing])
        answers = await gather_in_one_turn(
            run_scripts(client, [(incr, ["ok"], [])]), run_scripts(client, [(refusing, ["refused"], [reply])])
        )
        assert [type(a) for a in answers] == [error, error], (reply, answers)
        assert await redis.mget("ok", "refused") == [b"2", b"2"], reply  # sent twice: one retry
        await redis.delete("ok", "refused")
    # any other error reply is its caller's alone, not retried; on a replica's pool, READONLY too
    incr, refusing = sentinel.register_script(INCR), sentinel.register_script(refuse)
    others: list[tuple[bool, str, type[Exception], str]] = [
        (True, "ERR my own", ResponseError, "my own"),  # redis-py drops the "ERR "
        (False, "READONLY x", ReadOnlyError, "x"),
    ]
    for is_master, reply, other, message in others:
        pool.is_master = is_master
        answers = await gather_in_one_turn(
            run_scripts(sentinel, [(incr, ["ok"], [])]), run_scripts(sentinel, [(refusing, ["refused"], [reply])])
        )
        assert answers[0] == [1] and type(answers[1]) is other and str(answers[1]) == message, answers
        assert await redis.mget("ok", "refused") == [b"1", b"1"], reply
        await redis.delete("ok", "refused")
    await sentinel.aclose()
    await plain.aclose()


# The connections a Batcher holds between batches (worker.process.held): the same answers as
# taking one from the pool each batch, which is what the pipeline sender still does.


def checked_out(client: Redis) -> int:
    """Connections of the client's pool not in it: held by the Batcher, or a batch's in flight."""
    return len(client.connection_pool._in_use_connections)


async def connections_named(admin: Redis, name: str) -> list[int]:
    return [int(c["id"]) for c in await admin.client_list() if c["name"] == name]


@pytest.mark.parametrize("closed_by", ["client kill", "server timeout"])
async def test_a_held_connection_the_server_closed_is_not_used_for_the_next_batch(
    redis_url: str, admin: Redis, closed_by: str
):
    """A connection Redis closed while it was idle (CLIENT KILL, its `timeout`, a restart) would
    fail the next batch on a client without retries (a producer's); the pool would have
    reconnected it, and so must the Batcher."""
    client = Redis.from_url(redis_url, client_name="held")  # no retry: a dead connection would fail the batch
    scripts.batch_calls(client)
    incr = client.register_script(INCR)
    await preload(client, [incr])
    assert await run_scripts(client, [(incr, ["n"], [])]) == [1]
    [held] = await connections_named(admin, "held")
    if closed_by == "client kill":
        assert await admin.execute_command("CLIENT", "KILL", "ID", held) == 1
    else:
        await admin.config_set("timeout", 1)
        try:

            async def closed() -> bool:
                return held not in [int(c["id"]) for c in await admin.client_list()]

            await wait_until_async(closed, 10, "Redis closing the idle connection")
        finally:
            await admin.config_set("timeout", 0)
    assert await gather_in_one_turn(
        run_scripts(client, [(incr, ["n"], [])]), run_scripts(client, [(incr, ["m"], [])])
    ) == [[2], [1]]
    assert held not in await connections_named(admin, "held")
    await client.aclose()


async def test_overlapping_batches_take_distinct_connections_and_at_most_a_few_stay_held(
    redis_url: str, redis: Redis, admin: Redis
):
    client = Redis.from_url(redis_url)
    scripts.batch_calls(client)
    incr, read = client.register_script(INCR), client.register_script(READ)
    await preload(client, [incr, read])
    await redis.set("r", "v")
    await admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    keys = [f"k{i}" for i in range(held.MOST + 1)]
    waiting: list[asyncio.Future[list[Any]]] = []
    for key in keys:  # one batch more than are held, each held in the server before the next is sent
        waiting.append(asyncio.ensure_future(run_scripts(client, [(incr, [key], [])])))

        async def paused(n: int = len(waiting)) -> bool:
            clients = await admin.client_list()
            return sum(1 for c in clients if "b" in c["flags"] and c["cmd"] == "evalsha") == n

        await wait_until_async(paused, 10, f"{len(waiting)} batches held by CLIENT PAUSE")
    # one more (no writes) is answered while they wait: a connection of its own
    assert await run_scripts(client, [(read, ["r"], [])]) == [b"v"]
    await admin.execute_command("CLIENT", "UNPAUSE")
    assert await asyncio.gather(*waiting) == [[1]] * len(keys)
    assert len(client.connection_pool._available_connections) + checked_out(client) == len(keys) + 1
    assert checked_out(client) <= held.MOST  # the others back in the pool
    assert await gather_in_one_turn(*(run_scripts(client, [(incr, [k], [])]) for k in keys)) == [[2]] * len(keys)
    await client.aclose()


async def test_a_held_connection_leaves_the_pool_one_for_the_clients_other_commands(redis_url: str):
    client = Redis.from_url(redis_url, max_connections=1)  # a bound in REDIS_URL, at its least
    scripts.batch_calls(client)
    incr = client.register_script(INCR)
    await preload(client, [incr])
    assert await run_scripts(client, [(incr, ["n"], [])]) == [1]
    assert await client.get("n") == b"1"  # held, the only connection: "Too many connections"
    assert await run_scripts(client, [(incr, ["n"], [])]) == [2]
    await client.aclose()


async def test_nothing_is_held_after_the_workers_shutdown(redis_url: str):
    client = Redis.from_url(redis_url)
    scripts.batch_calls(client)
    incr = client.register_script(INCR)
    await preload(client, [incr])
    assert await run_scripts(client, [(incr, ["n"], [])]) == [1]
    await service.shutdown({"redis": client})  # as the worker's on_shutdown, before its pool closes
    assert checked_out(client) == 0
    assert await run_scripts(client, [(incr, ["n"], [])]) == [2]  # still answered, and given back
    assert checked_out(client) == 0
    await client.aclose()


async def test_a_held_connection_to_a_master_the_sentinels_replaced_is_not_used(redis: Redis):
    """After a failover the Sentinel pool closes its idle connections when it learns the new
    master's address (a connection's connect asks the sentinels); a held one is not idle to the
    pool, and without its own check would go on writing to the old master."""
    host, port = redis.connection_pool.connection_kwargs["host"], redis.connection_pool.connection_kwargs["port"]
    manager = OneMaster((host, port))
    pool = SentinelConnectionPool("mymaster", manager, connection_class=FollowMaster)
    client = Redis(connection_pool=pool)
    scripts.batch_calls(client)
    incr = client.register_script(INCR)
    with PrivateRedis() as new_master:
        new = Redis.from_url(new_master.url)
        await preload(client, [incr])
        assert await run_scripts(client, [(incr, ["n"], [])]) == [1]
        manager.address = (host, new_master.port)
        await pool.get_master_address()  # what the next connect does: the pool learns the new master
        assert await run_scripts(client, [(incr, ["n"], [])]) == [1]  # loaded again there (NOSCRIPT)
        assert await new.get("n") == b"1" and await redis.get("n") == b"1"
        await new.aclose()
    await client.aclose()
