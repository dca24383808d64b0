"""The queue's order: a producer's jobs run in the order it enqueued them, even within one
millisecond (the queue's score is the due time in ms; jobs tied on it would run in the order of
their random ids). See docs/job-format.md."""

from __future__ import annotations

import itertools
import time

from producers import ChatJob, Producer
from tests.helpers import run_worker


def job(i: int) -> ChatJob:
    return ChatJob(model="gpt-4.1", messages=[{"role": "user", "content": f"q{i}"}])


async def queued(producer: Producer) -> list[str]:
    return [raw.decode() for raw in await producer.redis.zrange(producer.queue_name, 0, -1)]


async def test_jobs_enqueued_in_one_millisecond_keep_their_order(settings):
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        before_ms = int(time.time() * 1000)
        ids = await producer.enqueue_many([job(i) for i in range(40)])  # one call: one clock reading
        ids += [await producer.enqueue(job(i)) for i in range(40, 60)]  # a few a millisecond
        after_ms = int(time.time() * 1000)
        assert await queued(producer) == ids
        scores = [s for _, s in await producer.redis.zrange(producer.queue_name, 0, -1, withscores=True)]
        assert all(a < b for a, b in itertools.pairwise(scores)), scores  # no two tied
        assert before_ms <= scores[0] and scores[-1] < after_ms + 1  # each due when it was enqueued

        await run_worker(settings.model_copy(update={"worker_concurrency": 1}))
        results = [await producer.result(i) for i in ids]
        assert all(r.status == "succeeded" and r.started_at for r in results)
        started = [r.started_at.timestamp() for r in results]
        assert started == sorted(started)  # they ran in the order they were enqueued


async def test_a_producer_keeps_its_order_past_thousands_a_millisecond(settings):
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        ids = await producer.enqueue_many([job(i) for i in range(10_000)])
        assert await queued(producer) == ids
        more = await producer.enqueue_many([job(i) for i in range(3)])  # after the last, whatever the clock
        assert (await queued(producer))[-3:] == more
