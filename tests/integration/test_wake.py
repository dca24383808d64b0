"""Idle workers wake on the queue's wake-up (worker.process.wake): a job that arrives starts without
waiting for a poll; a deferred job starts at its due time; a lost wake-up costs only the
fallback poll (IDLE_POLL_S); one enqueue wakes one idle worker, not all of them.

The fallback poll is set far beyond each test's deadline (a minute): a job that ends in time was
started by the wake-up, not by a poll. Nothing here times anything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from arq.constants import job_key_prefix

from producers.api import Producer
from worker.contract.keys import wake_key
from worker.contract.settings import Settings
from worker.process.runner import RouterWorker
from worker.process.service import create_worker
from worker.process.wake import Wake

FALLBACK_S = 60.0  # no test waits this long: what ends in time was woken


@pytest.fixture
def idle_settings(settings: Settings) -> Settings:
    # a long lease: no running job's lease end (a due time in the queue) wakes an idle worker
    return settings.model_copy(update={"idle_poll_s": FALLBACK_S, "poll_delay_s": FALLBACK_S, "lease_s": 60})


async def until(check: Callable[[], Awaitable[Any]], deadline_s: float = 15.0) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if found := await check():
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {deadline_s} s: {check.__name__}")


async def blocked(redis: Any) -> int:
    return int((await redis.info("clients"))["blocked_clients"])


@contextlib.asynccontextmanager
async def workers(settings: Settings, n: int = 1) -> AsyncIterator[list[RouterWorker]]:
    """`n` workers in this process, as in production (not burst)."""
    made = [create_worker(settings, handle_signals=False) for _ in range(n)]
    tasks = [asyncio.create_task(w.main()) for w in made]
    try:
        yield made
    finally:
        for w, task in zip(made, tasks, strict=True):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await w.close()


async def result_of(producer: Producer, job_id: str) -> Any:
    async def stored() -> Any:
        return await producer.result(job_id)

    return await until(stored)


@pytest.mark.parametrize(
    ("fair_share", "bulk"), [(False, False), (True, False), (False, True)], ids=["queue", "fair", "bulk"]
)
async def test_a_job_arriving_to_an_idle_worker_wakes_it(idle_settings, make_producer, redis, fair_share, bulk):
    s = idle_settings.model_copy(update={"fair_share": fair_share})
    producer = await make_producer(s, source="tests", own_settings=True)
    async with workers(s):
        await until(lambda: _at_least(redis, 1))  # idle: blocked on the wake-up
        job_id = await producer.chat("gpt-4.1", "wake up", bulk=bulk)
        assert (await result_of(producer, job_id)).status == "succeeded"


async def _at_least(redis: Any, n: int) -> bool:
    return await blocked(redis) >= n


async def test_a_deferred_job_starts_at_its_due_time(idle_settings, make_producer, redis):
    producer = await make_producer(idle_settings, source="tests", own_settings=True)
    job_id = await producer.chat("gpt-4.1", "later")
    due = int(time.time() * 1000) + 500
    await redis.zadd(idle_settings.queue_name, {job_id: due}, xx=True)
    await redis.delete(wake_key(idle_settings.queue_name))  # no wake-up: only the due time
    async with workers(idle_settings):
        result = await result_of(producer, job_id)
    assert result.status == "succeeded" and result.started_at.timestamp() * 1000 >= due


async def test_a_lost_wake_up_costs_only_the_fallback_poll(settings, make_producer, redis):
    s = settings.model_copy(update={"idle_poll_s": 0.3, "poll_delay_s": FALLBACK_S, "lease_s": 60})
    producer = await make_producer(s, source="tests", own_settings=True)
    async with workers(s):
        await until(lambda: _at_least(redis, 1))
        # a producer that writes the queue itself and never wakes anyone
        job = {"f": "chat", "a": [{"model": "gpt-4.1", "messages": [{"role": "user", "content": "silent"}]}]}
        await redis.set(job_key_prefix + "silent", json.dumps(job))
        await redis.zadd(s.queue_name, {"silent": int(time.time() * 1000)})
        assert (await result_of(producer, "silent")).content == "[gpt-4.1] You said: silent"


async def test_one_enqueue_wakes_one_of_many_idle_workers(idle_settings, make_producer, redis):
    producer = await make_producer(idle_settings, source="tests", own_settings=True)
    polls: dict[int, int] = {}
    async with workers(idle_settings, n=8) as fleet:
        await until(lambda: _at_least(redis, 8))
        for i, w in enumerate(fleet):
            w._poll = _counting(w._poll, polls, i)  # type: ignore[method-assign, assignment]
        job_id = await producer.chat("gpt-4.1", "one of eight")
        assert (await result_of(producer, job_id)).status == "succeeded"
        await until(lambda: _at_least(redis, 8))  # all idle again
    # the woken one: the poll that started the job, one more (slots were left); the others none
    assert len(polls) == 1 and next(iter(polls.values())) <= 2


def _counting(poll: Callable[..., Awaitable[None]], polls: dict[int, int], i: int) -> Callable[..., Awaitable[None]]:
    async def counted(*args: Any) -> None:
        polls[i] = polls.get(i, 0) + 1
        await poll(*args)

    return counted


async def test_a_thousand_idle_waiters_one_enqueue_wakes_one(idle_settings, make_producer, redis):
    producer = await make_producer(idle_settings, source="tests", own_settings=True)
    q = idle_settings.queue_name
    waiter = Wake(redis, q, "bulk", "passes", "waiting:")
    waits = [asyncio.create_task(waiter.wait(FALLBACK_S)) for _ in range(1000)]
    try:
        await until(lambda: _at_least(redis, 1000))
        await producer.chat("gpt-4.1", "one")
        await until(lambda: _done_count(waits, 1))
        assert await blocked(redis) == 999 and await redis.llen(wake_key(q)) == 0
        await producer.enqueue_many([_job(i) for i in range(5)])  # one round trip, five jobs
        await until(lambda: _done_count(waits, 6))
        assert await blocked(redis) == 994 and sum(t.done() and t.result() for t in waits) == 6
    finally:
        for t in waits:
            t.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def _job(i: int) -> Any:
    from worker.contract.models import ChatJob, Message

    return ChatJob(model="gpt-4.1", messages=[Message(role="user", content=f"job {i}")])


async def _done_count(tasks: list[asyncio.Task[bool]], n: int) -> bool:
    return sum(t.done() for t in tasks) >= n
