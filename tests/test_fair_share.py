"""Fair share between sources (worker.fair, README "Fair share"): each source waits in its own
sub-queue and workers take from them by weight. Real Redis, the simulator, worker processes."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from harness.wait import wait_until_async
from producers import ChatJob, Producer
from tests.helpers import run_worker, sim_admin
from worker import fair
from worker.lease import Lease


def job(source: str, i: int) -> ChatJob:
    return ChatJob(model="gpt-4.1", messages=[{"role": "user", "content": f"{source} q{i}"}], source=source)


@pytest.fixture
def fair_settings(settings):
    return settings.model_copy(
        update={"fair_share": True, "source_weights": {"billing": 3, "search": 1}, "lease_s": 2.0}
    )


@pytest.fixture
async def producer(fair_settings):
    async with Producer(fair_settings.redis_url, queue_name=fair_settings.queue_name) as p:
        p.settings = fair_settings
        yield p


def lease_for(producer: Producer) -> Lease:
    s = producer.settings
    return Lease(producer.redis, s.queue_name, s.lease_s, fair.FairQueue(producer.redis, s, s.queue_name))


async def picks(lease: Lease, n: int) -> list[str]:
    """The sources of the next `n` jobs the fair claim hands out, one a claim."""
    out: list[str] = []
    for _ in range(n):
        claimed = await lease.claim_fair(1, int(time.time() * 1000))
        out += [c.source or "" for c in claimed if c.what == "run"]
    return out


async def test_jobs_wait_in_their_sources_sub_queue_not_the_queue(producer):
    ids = await producer.enqueue_many([job("billing", i) for i in range(3)] + [job("search", 0)])
    plain = await producer.enqueue(ChatJob(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}]))
    q = producer.queue_name
    assert await producer.redis.zcard(q) == 0
    assert [r.decode() for r in await producer.redis.zrange(fair.waiting_key(q, "billing"), 0, -1)] == ids[:3]
    assert await producer.redis.zrange(fair.waiting_key(q, "default"), 0, -1) == [plain.encode()]
    assert await producer.queued() == 5  # what the ingress's queue-depth limit counts


async def test_weights_three_to_one_while_both_wait(producer):
    await producer.enqueue_many([job("billing", i) for i in range(40)] + [job("search", i) for i in range(40)])
    got = Counter(await picks(lease_for(producer), 40))
    assert got == {"billing": 30, "search": 10}


async def test_a_source_alone_gets_every_slot_and_one_that_joins_late_gets_no_credit(producer):
    lease = lease_for(producer)
    await producer.enqueue_many([job("search", i) for i in range(30)])
    claimed = await lease.claim_fair(20, int(time.time() * 1000))
    assert [c.source for c in claimed] == ["search"] * 20  # work-conserving: weight 1 alone takes all
    # billing (weight 3) joins now: from here on 3:1 (give or take the one pick it joins on), not a
    # run of 20 to "catch up" for the ones it was not there for
    await producer.enqueue_many([job("billing", i) for i in range(40)])
    got = Counter(await picks(lease, 20))
    assert got["billing"] in (15, 16) and got["search"] == 20 - got["billing"], got


async def test_order_within_a_source_is_kept(producer, fair_settings):
    billing = await producer.enqueue_many([job("billing", i) for i in range(12)])
    search = await producer.enqueue_many([job("search", i) for i in range(12)])
    await run_worker(fair_settings.model_copy(update={"worker_concurrency": 1}))
    for ids in (billing, search):
        results = [await producer.result(i) for i in ids]
        assert all(r is not None and r.status == "succeeded" for r in results)
        started = [r.started_at.timestamp() for r in results]
        assert started == sorted(started)


async def test_sources_past_the_bound_share_other(producer, fair_settings):
    producer.settings = fair_settings.model_copy(update={"fair_share_max_sources": 2})
    for name in ("s1", "s2", "s3", "s4", "billing"):
        await producer.enqueue(job(name, 0))
    depths = {d.source: d.waiting for d in await lease_for(producer).fair.depths(0)}
    assert depths == {"s1": 1, "s2": 1, "other": 2, "billing": 1}  # billing is named in SOURCE_WEIGHTS


async def test_fair_share_off_keeps_one_queue(producer, fair_settings):
    producer.settings = fair_settings.model_copy(update={"fair_share": False})
    ids = await producer.enqueue_many([job("billing", i) for i in range(3)])
    assert [r.decode() for r in await producer.redis.zrange(producer.queue_name, 0, -1)] == ids
    assert await producer.redis.zcard(fair.passes_key(producer.queue_name)) == 0


async def test_deferred_job_goes_back_to_its_sources_sub_queue(producer):
    lease = lease_for(producer)
    [first, *_] = await producer.enqueue_many([job("search", i) for i in range(2)])
    [held] = await lease.claim_fair(1, int(time.time() * 1000))
    assert held.raw_id.decode() == first and held.what == "run"
    await lease.requeue(first, int(time.time() * 1000) + 60_000)  # a long rate-limit wait
    q = producer.queue_name
    assert await producer.redis.zscore(q, first) is None
    assert await producer.redis.zscore(fair.waiting_key(q, "search"), first) is not None
    assert await producer.redis.zcard(fair.running_key(q, "search")) == 0
    # the job due now goes first; the deferred one is not taken before its time
    taken = await lease.claim_fair(5, int(time.time() * 1000))
    assert [c.raw_id.decode() for c in taken] != [first] and len(taken) == 1


async def test_several_workers_one_killed_mid_run_lose_nothing_and_run_nothing_twice(
    producer, fair_settings, sim, workers
):
    s = fair_settings.model_copy(update={"worker_concurrency": 4, "poll_delay_s": 0.02})
    sim_admin(sim, "/_sim/config", {"latency_ms": 600})
    ids = await producer.enqueue_many([job("billing", i) for i in range(12)] + [job("search", i) for i in range(12)])
    a = workers(s)
    workers(s)
    await wait_until_async(lambda: sim_admin(sim, "/_sim/stats")["in_flight"] >= 6, 20, "both workers mid-call")
    a.send(signal.SIGKILL)
    workers(s)

    async def done() -> bool:
        return await producer.redis.exists(*[f"llm-router:result:{i}" for i in ids]) == len(ids)

    await wait_until_async(done, 60, "every job's result")
    results = [await producer.result(i) for i in ids]
    assert all(r is not None and r.status == "succeeded" for r in results)
    # a job the kill cut short ran again; none was billed twice: one finished call per job, and
    # the spend in Redis is what the simulator charged
    assert all(len(r.attempts) == 1 for r in results if r is not None)
    assert any(r.runs == 2 for r in results if r is not None)  # the kill did cut some short
    charged = sim_admin(sim, "/_sim/stats")["charged"]
    assert await producer.store.spend() == pytest.approx({m: c for m, c in charged.items() if c})
    q = producer.queue_name
    assert await producer.redis.zcard(fair.passes_key(q)) == 0 and await producer.redis.zcard(q) == 0


def test_arq_s_own_worker_runs_jobs_from_the_sub_queues(fair_settings, redis_url):
    """`arq worker.WorkerSettings` reads only the queue: its keeper moves jobs from the sub-queues."""
    import asyncio
    import os
    import subprocess
    import sys

    from harness.processes import settings_env

    async def enqueue() -> str:
        async with Producer(redis_url, queue_name=fair_settings.queue_name) as p:
            p.settings = fair_settings
            return await p.enqueue(job("search", 0))

    job_id = asyncio.run(enqueue())
    env = {**os.environ, **settings_env(fair_settings)}
    arq = os.path.join(os.path.dirname(sys.executable), "arq")
    out = subprocess.run([arq, "worker.WorkerSettings", "--burst"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr

    async def result() -> object:
        async with Producer(redis_url, queue_name=fair_settings.queue_name) as p:
            return await p.result(job_id)

    r = asyncio.run(result())
    assert r is not None and r.status == "succeeded"  # type: ignore[attr-defined]
