"""The bulk lane: bulk jobs (batch lines) run only in the slots interactive jobs leave free,
never book rate-limit slots far ahead of them, and two producers' bulk jobs interleave."""

from __future__ import annotations

import asyncio

from arq.utils import timestamp_ms

from harness.wait import wait_until_async
from producers import ChatJob, Producer
from tests.helpers import run_worker, sim_admin
from worker.contract.keys import bulk_key, in_progress_key, job_key
from worker.contract.settings import RateLimit
from worker.process.lease import Lease


def lines(n: int, model: str = "gpt-4o-mini", tag: str = "line") -> list[ChatJob]:
    return [ChatJob(model=model, messages=[{"role": "user", "content": f"{tag} {i}"}], bulk=True) for i in range(n)]


async def test_promote_takes_the_front_of_the_lane_under_the_lease(redis):
    await redis.zadd(bulk_key("q"), {"a": 1, "b": 2, "c": 3, "gone": 0})
    for i in ("a", "b", "c"):
        await redis.set(job_key(i), "{}")
    now = timestamp_ms()
    promoted = await Lease(redis, "q", lease_s=3).promote(3, now)
    assert [(c.raw_id, c.score, c.what, c.record, c.tries) for c in promoted] == [
        (b"gone", now + 3000, "missing", b"", 0),
        (b"a", now + 3000, "run", b"{}", 1),
        (b"b", now + 3000, "run", b"{}", 1),
    ]
    assert await redis.zrange(bulk_key("q"), 0, -1) == [b"c"]
    # in the queue while they run, scored at the lease's end: due again only if this worker dies
    assert await redis.zrange("q", 0, -1, withscores=True) == [(b"a", now + 3000), (b"b", now + 3000)]
    assert 0 < await redis.pttl(in_progress_key("a")) <= 3000


async def test_two_producers_bulk_jobs_interleave(settings, redis):
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        first = await producer.enqueue_many(lines(10, tag="a"))
        second = await producer.enqueue_many(lines(10, tag="b"))
    front = [m.decode() for m in await redis.zrange(bulk_key(settings.queue_name), 0, 9)]
    assert len(set(front) & set(second)) >= 4 and len(set(front) & set(first)) >= 4  # neither waits for the other
    assert await redis.zcard(settings.queue_name) == 0  # nothing bulk in the queue itself


async def test_interactive_jobs_go_ahead_of_queued_bulk_jobs(settings, sim):
    sim_admin(sim, "/_sim/config", {"latency_ms": 100})
    s = settings.model_copy(update={"worker_concurrency": 2})
    async with Producer(s.redis_url, queue_name=s.queue_name) as producer:
        bulk = await producer.enqueue_many(lines(30))
        worker = asyncio.create_task(run_worker(s))
        await wait_until_async(lambda: sim_admin(sim, "/_sim/stats")["in_flight"] == 2, 10, "the bulk jobs to start")
        interactive = [await producer.chat("gpt-4.1", f"now {i}") for i in range(3)]
        await asyncio.wait_for(worker, 30)
        firsts = [await producer.result(i) for i in interactive]
        lines_done = [await producer.result(i) for i in bulk]
    assert all(r.status == "succeeded" for r in firsts + lines_done)
    last_interactive = max(r.started_at for r in firsts if r.started_at)
    # each started ahead of the waiting lines: none started between its enqueue and its start but
    # what one poll could take for the 2 slots before it saw the job (an order, not a duration)
    for r in firsts:
        assert sum(r.enqueued_at < line.started_at < r.started_at for line in lines_done) <= 2
    assert sum(r.started_at > last_interactive for r in lines_done) >= 20


async def test_bulk_jobs_never_book_the_rate_limit_far_ahead(settings, sim):
    rpm = 240  # one call every 0.25 s
    s = settings.model_copy(
        update={"worker_concurrency": 30, "rate_limits": {"gpt-4o-mini": RateLimit(rpm=rpm)}, "max_wait_s": 30}
    )
    async with Producer(s.redis_url, queue_name=s.queue_name) as producer:
        await producer.enqueue_many(lines(24))  # 6 s of the limit, all of them in slots at once
        worker = asyncio.create_task(run_worker(s))
        await wait_until_async(
            lambda: sim_admin(sim, "/_sim/stats")["calls"].get("gpt-4o-mini", 0) >= 3, 10, "the bulk jobs to be calling"
        )
        urgent = await producer.chat("gpt-4o-mini", "urgent", fallbacks=[])
        await asyncio.wait_for(worker, 30)
        result = await producer.result(urgent)
    interval = 60 / rpm / (1 - s.rate_limit_headroom)
    # bulk jobs booked at most BULK_HORIZON_S ahead: the interactive job waited about that plus one slot,
    # not behind the 20 lines still waiting (about 5 s)
    assert (
        result.status == "succeeded" and result.attempts[0].waited_s <= 0.5 + 2 * interval + 0.3
    )  # BULK_HORIZON_S 0.5


async def test_a_burst_worker_empties_the_bulk_lane(settings, sim):
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        ids = await producer.enqueue_many(lines(40))
        await run_worker(settings.model_copy(update={"worker_concurrency": 1}))
        assert all([(await producer.result(i)) is not None for i in ids]) and await producer.queued() == 0


async def test_a_slow_job_never_idles_the_other_slots(settings, sim):
    """Running jobs are out of the poll's way: the free slot keeps taking the jobs behind them."""
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o", "latency_ms": 2000})
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        slow = await producer.chat("gpt-4o", "slow")
        fast = [await producer.chat("gpt-4o-mini", f"fast {i}") for i in range(10)]
        await run_worker(settings.model_copy(update={"worker_concurrency": 2}))
        slow_done = (await producer.result(slow)).finished_at
        assert all([(await producer.result(i)).finished_at < slow_done for i in fast])


async def test_the_bulk_lane_is_checked_like_the_queue(settings, redis, sim):
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        [done] = await producer.enqueue_many(lines(1))
        await run_worker(settings)
        await redis.zadd(bulk_key(settings.queue_name), {b"\xff\xfe": 1, done: 2})  # garbage, and a finished job
        await redis.set(job_key(done), b"{}")
        fine = await producer.chat("gpt-4.1", "still here")
        await run_worker(settings)
        assert (await producer.result(fine)).status == "succeeded"
    assert sim_admin(sim, "/_sim/stats")["calls"].get("gpt-4o-mini") == 1  # the finished job did not run again
    assert await redis.llen("llm-router:quarantine") == 1 and await redis.zcard(bulk_key(settings.queue_name)) == 0


async def test_a_burst_worker_that_goes_round_for_the_bulk_lane_starts_up_once(settings, sim, monkeypatch):
    """arq's `main` runs `on_startup` at every call, and a burst worker calls it again while the
    bulk lane holds jobs (at one slot, after every job): each start-up made new resources, a
    keeper, a webhook sender, a Batcher (whose held connections the shutdown never gave back)
    and an HTTP client, none of which the shutdown, which sees only the last, closed."""
    from worker.process import service

    started: list[int] = []
    startup = service.startup

    async def counted(ctx: dict) -> None:
        started.append(1)
        await startup(ctx)

    monkeypatch.setattr(service, "startup", counted)
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        ids = await producer.enqueue_many(lines(5))
        await run_worker(settings.model_copy(update={"worker_concurrency": 1}))
        assert all([(await producer.result(i)) is not None for i in ids])
    assert len(started) == 1
    left = {t.get_name() for t in asyncio.all_tasks() if not t.done()}
    assert not left & {"llm-router-keeper", "llm-router-webhooks", "llm-router-gateway-check"}
