"""Fair share in the rate limit (worker/lua/fair_line.lua, a part of worker.limits.limiter's admission), on the
real redis-server: the jobs waiting for a model's slot take it in the sources' fair order, not
in the order they ask; a source that starts waiting goes before the jobs another has waiting; a
bulk job waits behind every one of them; a member whose worker died is taken off."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from redis.asyncio import Redis

from harness.wait import wait_until_async
from worker.contract.settings import RateLimit, Settings
from worker.limits import fair
from worker.limits.limiter import Limiter

FAR = 3600.0  # a caller's reach that takes any slot: whether it books is the line's call alone
NEAR = 1.0  # a reach short of the next slot (10 s apart): the caller must wait


def make(redis: Redis, **kw) -> Limiter:
    base = dict(
        rate_limit_headroom=0,
        rate_limits={"m": RateLimit(rpm=6)},  # a slot every 10 s
        fair_share=True,
        source_weights={"a": 3},
        _env_file=None,
    )
    return Limiter(redis, Settings(**{**base, **kw}))


def ticket(limiter: Limiter, job_id: str, source: str, join: bool = True, bulk: bool = False) -> fair.LineTicket:
    return fair.ticket(limiter.settings, "m", job_id, source, bulk, join)


async def ask(limiter: Limiter, job_id: str, source: str, reach: float = FAR, **kw) -> str:
    return (await limiter.admit("m", 0, reach, line=ticket(limiter, job_id, source, **kw))).status


async def line(limiter: Limiter, bulk: bool = False) -> list[str]:
    key = fair.line_key(limiter.settings.queue_name, "m", bulk)
    return [m.decode() for m in await limiter.redis.zrange(key, 0, -1)]


async def test_a_source_that_starts_waiting_goes_before_the_jobs_another_has_waiting(redis: Redis):
    limiter = make(redis, source_weights={})
    assert await ask(limiter, "a0", "a") == "ok"  # nobody waits: booked at once
    for i in (1, 2, 3):
        assert await ask(limiter, f"a{i}", "a", NEAR) == "line"  # the next slot is 10 s off
    # b1 asks last, from a worker whose waiters are all taken (it would give its slot back), and
    # still goes to the front: its turn is next (tied with a1's), not behind a's three
    assert await ask(limiter, "b1", "b", NEAR, join=False) == "line"
    assert set((await line(limiter))[:2]) == {"a1", "b1"}
    # the slots come within reach: whoever asks, they go in the line's order
    assert await ask(limiter, "a3", "a") == "line"
    assert await ask(limiter, "a2", "a") == "line"
    assert await ask(limiter, "b1", "b") == "ok"
    assert await ask(limiter, "a3", "a") == "line"
    assert await ask(limiter, "a1", "a") == "ok"
    assert await ask(limiter, "a2", "a") == "ok"
    assert await ask(limiter, "a3", "a") == "ok"
    assert await line(limiter) == []


async def test_the_line_orders_sources_by_weight(redis: Redis):
    limiter = make(redis)  # a: weight 3, b: 1
    assert await ask(limiter, "first", "c") == "ok"
    for i in range(6):
        assert await ask(limiter, f"b{i}", "b", NEAR) == "line"
    for i in range(12):
        assert await ask(limiter, f"a{i}", "a", NEAR) == "line"
    order = await line(limiter)
    for start in range(0, 16, 4):  # any four in a row: three of a's, one of b's
        assert sum(m.startswith("a") for m in order[start : start + 4]) == 3, order
    assert [m for m in order if m.startswith("b")] == [f"b{i}" for i in range(6)]  # each source's own order kept
    # the back of the line asks first each time: only the front books (ties go to who asks first)
    booked = []
    for _ in range(8):
        for m in reversed(await line(limiter)):
            if await ask(limiter, m, m[0]) == "ok":
                booked.append(m)
                break
    assert set(booked[:4]) == set(order[:4]) and set(booked[4:]) == set(order[4:8]), (booked, order)


async def test_a_job_that_would_give_its_slot_back_joins_only_when_its_turn_is_next(redis: Redis):
    limiter = make(redis, source_weights={})
    assert await ask(limiter, "a0", "a") == "ok"
    assert await ask(limiter, "a1", "a", NEAR) == "line"
    assert await ask(limiter, "a2", "a", NEAR, join=False) == "wait"  # behind a1: not in the line
    assert await line(limiter) == ["a1"]


async def test_bulk_jobs_book_only_while_no_interactive_job_waits_and_by_weight(redis: Redis):
    limiter = make(redis)  # a: weight 3, b: 1
    assert await ask(limiter, "i0", "a") == "ok"
    assert await ask(limiter, "i1", "a", NEAR) == "line"
    for i in range(2):
        assert await ask(limiter, f"bulk-b{i}", "b", bulk=True) == "line"  # a slot within reach, but i1 waits
    for i in range(6):
        assert await ask(limiter, f"bulk-a{i}", "a", bulk=True) == "line"
    assert await line(limiter) == ["i1"]  # the bulk jobs wait in a line of their own
    bulk_order = await line(limiter, bulk=True)
    assert [m[5] for m in bulk_order[:4]].count("a") == 3, bulk_order  # by weight there too
    assert await ask(limiter, bulk_order[0], bulk_order[0][5], bulk=True) == "line"  # its turn, but i1 first
    assert await ask(limiter, "i1", "a") == "ok"
    for m in bulk_order[1:]:  # only the bulk line's front books
        assert await ask(limiter, m, m[5], bulk=True) == "line"
    assert await ask(limiter, bulk_order[0], bulk_order[0][5], bulk=True) == "ok"
    assert await line(limiter, bulk=True) == bulk_order[1:]


async def test_a_member_that_leaves_or_whose_worker_died_stops_holding_the_line(redis: Redis):
    limiter = make(redis, source_weights={})
    assert await ask(limiter, "a0", "a") == "ok"
    assert await ask(limiter, "dead", "a", NEAR) == "line"  # told to ask again within a second...
    assert await ask(limiter, "left", "a", NEAR) == "line"
    assert await ask(limiter, "next", "a", NEAR) == "line"
    await fair.leave_line(redis, ticket(limiter, "left", "a"))  # gave up waiting: off at once
    assert await line(limiter) == ["dead", "next"]

    async def next_books() -> bool:  # ...and never does: once its time and the grace are past, it is off
        return await ask(limiter, "next", "a") == "ok"

    await wait_until_async(next_books, 10, "the dead member to be taken off", interval=0.05)
    assert await line(limiter) == []


async def test_without_fair_share_or_a_limit_there_is_no_line(redis: Redis):
    from worker.calls.routing import Call, SlotTurn

    for limiter, expected in (
        (make(redis), True),
        (make(redis, fair_share=False), False),
        (make(redis, rate_limits={}), False),
        (make(redis, rate_limits={}, global_rate_limit=RateLimit(rpm=60)), True),
    ):
        # what SlotTurn reads of a worker's resources
        res: Any = SimpleNamespace(settings=limiter.settings, limiter=limiter, lease=None, slot_waiters=0)
        call = Call(res, "j", {}, max_wait_s=5, source="a")
        assert (SlotTurn(call, "m").ticket(True) is not None) is expected
