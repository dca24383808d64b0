"""Fair share between sources (worker.limits.fair, docs/fair-share.md): each source waits in its own
sub-queue and workers take from them by weight. Real Redis, the simulator, worker processes."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from harness.wait import wait_until_async
from producers import ChatJob, JobRejected, Producer, SourceOverQuota
from tests.conftest import MakeProducer
from tests.helpers import run_worker, sim_admin
from worker.batches import record as wb
from worker.contract.settings import SourceLimit
from worker.limits import fair
from worker.process.lease import Lease


def payload(j: ChatJob) -> dict:
    return {"messages": j.build_messages(), **j.request_params()}


def job(source: str, i: int) -> ChatJob:
    return ChatJob(model="gpt-4.1", messages=[{"role": "user", "content": f"{source} q{i}"}], source=source)


@pytest.fixture
def fair_settings(settings):
    return settings.model_copy(
        update={"fair_share": True, "source_weights": {"billing": 3, "search": 1}, "lease_s": 2.0}
    )


@pytest.fixture
async def producer(fair_settings):
    async with Producer(settings=fair_settings) as p:
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


async def test_sources_past_the_bound_share_other(fair_settings):
    async with Producer(settings=fair_settings.model_copy(update={"fair_share_max_sources": 2})) as producer:
        for name in ("s1", "s2", "s3", "s4", "billing"):
            await producer.enqueue(job(name, 0))
        depths = {d.source: d.waiting for d in await lease_for(producer).fair.depths(0)}
    assert depths == {"s1": 1, "s2": 1, "other": 2, "billing": 1}  # billing is named in SOURCE_WEIGHTS


async def test_fair_share_off_keeps_one_queue(fair_settings):
    async with Producer(settings=fair_settings.model_copy(update={"fair_share": False})) as producer:
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


async def test_a_worker_killed_while_its_jobs_wait_in_the_slot_line_holds_nothing_up(
    make_producer, fair_settings, sim, workers
):
    """Under a shared rate limit, jobs wait in the model's slot line; a worker SIGKILLed with jobs
    there and in calls: the others still book every slot (the dead members are taken off), every
    job ends once, none billed twice."""
    from worker.contract.settings import RateLimit

    s = fair_settings.model_copy(
        update={"worker_concurrency": 4, "poll_delay_s": 0.02, "rate_limits": {"gpt-4.1": RateLimit(rpm=300)}}
    )
    producer = await make_producer(s, own_settings=True)
    sim_admin(sim, "/_sim/config", {"latency_ms": 300})
    ids = await producer.enqueue_many([job("billing", i) for i in range(12)] + [job("search", i) for i in range(12)])
    a = workers(s)
    workers(s)
    line = fair.line_key(s.queue_name, "gpt-4.1")

    async def a_waits_in_the_line() -> bool:
        return await producer.redis.zcard(line) >= 2 and sim_admin(sim, "/_sim/stats")["in_flight"] >= 1

    await wait_until_async(a_waits_in_the_line, 20, "jobs waiting in the slot line and in calls")
    a.send(signal.SIGKILL)
    workers(s)

    async def done() -> bool:
        return await producer.redis.exists(*[f"llm-router:result:{i}" for i in ids]) == len(ids)

    await wait_until_async(done, 90, "every job's result")
    results = [await producer.result(i) for i in ids]
    assert all(r is not None and r.status == "succeeded" and len(r.attempts) == 1 for r in results), results
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
        async with Producer(redis_url, settings=fair_settings) as p:
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


# ---------------------------------------------------------------- quotas (SOURCE_LIMITS)


async def with_limits(make_producer: MakeProducer, producer: Producer, limits: dict, **update: object) -> Producer:
    """A producer like `producer` whose settings have these SOURCE_LIMITS (and `update`)."""
    quotas = {k: SourceLimit(**v) for k, v in limits.items()}
    limited = producer.settings.model_copy(update={"source_limits": quotas, **update})
    return await make_producer(limited, own_settings=True)


async def test_a_source_at_its_concurrency_leaves_the_slots_to_others(producer, make_producer):
    producer = await with_limits(make_producer, producer, {"search": {"concurrency": 2}})
    lease = lease_for(producer)
    await producer.enqueue_many([job("search", i) for i in range(10)] + [job("billing", i) for i in range(10)])
    claimed = await lease.claim_fair(10, int(time.time() * 1000))
    assert Counter(c.source for c in claimed) == {"search": 2, "billing": 8}
    assert Counter(c.source for c in await lease.claim_fair(10, int(time.time() * 1000))) == {"billing": 2}
    # one of search's jobs ends: it may run one more, no more
    done = next(c.raw_id.decode() for c in claimed if c.source == "search")
    await producer.redis.set(f"llm-router:result:{done}", b"{}")
    await lease.release(done)
    assert Counter(c.source for c in await lease.claim_fair(10, int(time.time() * 1000))) == {"search": 1}


async def test_a_source_at_its_rpm_quota_is_given_no_more_than_its_schedule_starts(producer, make_producer):
    producer = await with_limits(
        make_producer, producer, {"search": {"rpm": 60}}
    )  # a request a second: one within the horizon
    lease = lease_for(producer)
    await producer.enqueue_many([job("search", i) for i in range(5)] + [job("billing", i) for i in range(5)])
    claimed = await lease.claim_fair(10, int(time.time() * 1000))
    assert Counter(c.source for c in claimed) == {"search": 1, "billing": 5}


async def test_quota_jobs_wait_in_their_sub_queue_and_all_run_once(producer, make_producer, fair_settings, sim):
    limits = {"search": SourceLimit(rpm=120, tpm=100_000)}  # a request every half second
    s = fair_settings.model_copy(update={"source_limits": limits, "worker_concurrency": 4})
    producer = await make_producer(s, own_settings=True)
    search = await producer.enqueue_many([job("search", i) for i in range(5)])
    billing = await producer.enqueue_many([job("billing", i) for i in range(5)])
    await run_worker(s)
    results = [await producer.result(i) for i in search + billing]
    assert all(r is not None and r.status == "succeeded" for r in results), results
    # a job sent back because its source was at its quota did not count as a run (MAX_JOB_RUNS)
    assert all(r is not None and r.runs == 1 for r in results)
    booked = await producer.redis.hgetall("llm-router:source-limit:search")
    assert set(booked) == {b"r", b"t"}  # the quota's schedule, shared by every worker
    assert await producer.redis.hget("llm-router:source-limit:search", "t") is not None
    assert sim_admin(sim, "/_sim/stats")["calls"]["gpt-4.1"] == 10


async def test_enqueue_far_over_the_rpm_quota_is_refused_with_retry_after(producer, make_producer):
    producer = await with_limits(make_producer, producer, {"search": {"rpm": 2}})
    await producer.enqueue_many([job("search", i) for i in range(2)])  # a minute's worth waits
    with pytest.raises(SourceOverQuota) as refused:
        await producer.enqueue(job("search", 2))
    assert isinstance(refused.value, JobRejected) and refused.value.field == "source"
    assert refused.value.retry_after == 30  # one job over a quota of 2 a minute
    assert "SOURCE_LIMITS" in str(refused.value)
    assert await producer.enqueue(job("billing", 0))  # other sources are not refused
    assert await producer.queued() == 3  # nothing of the refused job was written


async def test_enqueue_far_over_the_tpm_quota_is_refused_by_what_it_clears_of_jobs_this_size(producer, make_producer):
    big = [job("search", i).model_copy(update={"max_tokens": 1000}) for i in range(4)]
    size = fair.job_tokens(payload(big[3]))  # its prompt's estimate and its 1,000: what the limiter books
    assert 1000 < size < 1100
    producer = await with_limits(make_producer, producer, {"search": {"tpm": 3 * size}})  # three such jobs a minute
    await producer.enqueue_many(big[:3])
    with pytest.raises(SourceOverQuota) as refused:
        await producer.enqueue(big[3])
    assert refused.value.retry_after == 20  # one over, at three a minute
    assert f'"tpm": {3 * size}' in refused.value.message
    small = job("search", 9).model_copy(update={"max_tokens": 10})  # about 20 tokens: far from a minute's worth
    assert await producer.enqueue(small)
    assert await producer.queued() == 4


async def test_enqueue_far_over_the_concurrency_quota_is_refused(producer, make_producer):
    # clears 60 a minute (a job a second)
    producer = await with_limits(make_producer, producer, {"search": {"concurrency": 1}})
    await producer.enqueue_many([job("search", i) for i in range(60)])
    with pytest.raises(SourceOverQuota) as refused:
        await producer.enqueue(job("search", 60))
    assert refused.value.retry_after == 1  # one over: a second at a job a second
    assert await producer.queued() == 60


def test_the_ingress_answers_429_with_retry_after_far_over_quota(redis_url):
    from fastapi.testclient import TestClient

    from producers.http.app import create_app
    from tests.ingress import TOKENS
    from worker.contract.settings import Settings

    settings = Settings(
        redis_url=redis_url,
        ingress_tokens=TOKENS,
        fair_share=True,
        source_limits={"team-a": SourceLimit(rpm=1)},
        _env_file=None,
    )
    body = {"kind": "chat", "model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    with TestClient(create_app(settings)) as client:
        a = {"Authorization": "Bearer tok-a"}
        assert client.post("/v1/jobs", json=body, headers=a).status_code == 202
        refused = client.post("/v1/jobs", json=body, headers=a)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "source_quota"
        assert refused.headers["Retry-After"] == "60"
        assert client.post("/v1/jobs", json=body, headers={"Authorization": "Bearer tok-b"}).status_code == 202


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("limit", "accepted", "retry_after"),
    [
        # a job without max_tokens books its prompt and 512: this tpm clears two a minute
        ({"tpm": 2 * fair.job_tokens({"messages": HI})}, 2, "30"),
        ({"concurrency": 1}, 60, "1"),
    ],
)
def test_the_ingress_answers_429_far_over_a_tpm_or_concurrency_quota(redis_url, limit, accepted, retry_after):
    from fastapi.testclient import TestClient

    from producers.http.app import create_app
    from tests.ingress import TOKENS
    from worker.contract.settings import Settings

    settings = Settings(
        redis_url=redis_url,
        ingress_tokens=TOKENS,
        fair_share=True,
        source_limits={"team-a": SourceLimit(**limit)},
        _env_file=None,
    )
    body = {"kind": "chat", "model": "gpt-4.1", "messages": HI}
    with TestClient(create_app(settings)) as client:
        a = {"Authorization": "Bearer tok-a"}
        for _ in range(accepted):
            assert client.post("/v1/jobs", json=body, headers=a).status_code == 202
        refused = client.post("/v1/jobs", json=body, headers=a)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "source_quota"
        assert refused.headers["Retry-After"] == retry_after


async def test_admission_sends_a_job_back_when_its_source_is_at_quota_and_gives_the_run_back(producer, make_producer):
    from worker.limits.limiter import Limiter

    producer = await with_limits(make_producer, producer, {"search": {"rpm": 60, "tpm": 1000}})
    limiter = Limiter(producer.redis, producer.settings)
    await producer.enqueue(job("search", 0))  # waiting, so that the claim below has it to pass over
    first = await limiter.admit("gpt-4.1", 10, 30, source="search")
    assert first.status == "ok"
    later = await limiter.admit("gpt-4.1", 10, 30, source="search")  # a second later: past the horizon
    assert later.status == "quota" and 0.5 < later.wait_s <= 1.1
    assert (await limiter.admit("gpt-4.1", 10, 30, source="billing")).status == "ok"  # others are not held
    too_large = await limiter.admit("gpt-4.1", 5000, 30, source="search")
    assert too_large.status == "too_large" and "SOURCE_LIMITS" in (too_large.limit or "")
    lease = lease_for(producer)
    assert await lease.claim_fair(1, int(time.time() * 1000)) == []  # nor does the claim give search any now
    # a job sent back for its source's quota goes back to its sub-queue; the run it had does not count
    job_id = await producer.enqueue(job("billing", 0))
    [held] = await lease.claim_fair(1, int(time.time() * 1000))
    assert held.tries == 1
    await lease.requeue(job_id, int(time.time() * 1000), uncounted=True)
    assert await producer.redis.get(f"arq:retry:{job_id}") == b"0"


# ---------------------------------------------------------------- visible


async def test_the_exporter_and_the_sources_verb_show_each_source(producer, make_producer, fair_settings):
    import json
    import os
    import subprocess

    from harness.processes import llm_router, settings_env
    from worker.observe.exporter import QueueCollector

    # a lease that outlasts the CLI's start under load: the job it holds counts as running until then
    producer = await with_limits(make_producer, producer, {"search": {"concurrency": 3}}, lease_s=120)
    await producer.enqueue_many([job("billing", i) for i in range(4)] + [job("search", i) for i in range(2)])
    await lease_for(producer).claim_fair(1, int(time.time() * 1000))  # billing (3:1) runs one
    collector = QueueCollector(producer.settings)
    families = {f.name: f for f in collector.collect()}
    by = {
        name: {s.labels["source"]: s.value for s in families[name].samples}
        for name in ("llm_router_source_waiting", "llm_router_source_running")
    }
    assert by["llm_router_source_waiting"] == {"billing": 3, "search": 2}
    assert by["llm_router_source_running"] == {"billing": 1, "search": 0}
    assert [s.value for s in families["llm_router_queue_depth"].samples] == [5]  # the sub-queues count
    env = {**os.environ, **settings_env(producer.settings)}
    out = subprocess.run([llm_router(), "sources", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {r["source"]: r for r in json.loads(out.stdout)}
    assert rows["billing"]["waiting"] == 3 and rows["billing"]["running"] == 1 and rows["billing"]["weight"] == 3
    assert rows["search"]["quota"] == {"concurrency": 3}


async def test_two_worker_processes_share_three_to_one_while_both_sources_wait(producer, fair_settings, sim, workers):
    """The rotation is the fleet's (in Redis), not each worker's: two processes together start
    billing's and search's jobs 3:1 while both wait, then search alone gets every slot."""
    s = fair_settings.model_copy(update={"worker_concurrency": 2, "poll_delay_s": 0.02})
    sim_admin(sim, "/_sim/config", {"latency_ms": 150})
    billing = await producer.enqueue_many([job("billing", i) for i in range(30)])
    search = await producer.enqueue_many([job("search", i) for i in range(30)])
    workers(s)
    workers(s)

    async def done() -> bool:
        return await producer.redis.exists(*[f"llm-router:result:{i}" for i in billing + search]) == 60

    await wait_until_async(done, 90, "every job's result")
    results = {i: await producer.result(i) for i in billing + search}
    assert all(r is not None and r.status == "succeeded" for r in results.values())
    order = sorted(results, key=lambda i: results[i].started_at)
    first = Counter("billing" if i in billing else "search" for i in order[:24])
    # 3:1 is 18:6; a slot that frees while a claim is in flight can shift a pick or two
    assert 16 <= first["billing"] <= 20, first
    assert all(i in search for i in order[-10:])  # billing ran out first: search alone takes every slot


async def test_jobs_past_the_slot_waiters_give_their_slot_back_and_still_run_once(
    producer, make_producer, fair_settings, sim
):
    """Under a shared rate limit a worker lets FAIR_SHARE_SLOT_WAITERS jobs wait for a slot; the
    others go back to their place in their sub-queue (not counted as runs) and run in their turn."""
    from worker.contract.settings import RateLimit

    s = fair_settings.model_copy(
        update={
            "rate_limits": {"gpt-4.1": RateLimit(rpm=600)},  # a call every 0.1 s: most jobs wait
            "worker_concurrency": 8,
            "fair_share_slot_waiters": 1,
        }
    )
    producer = await make_producer(s, own_settings=True)
    ids = await producer.enqueue_many([job("billing", i) for i in range(8)] + [job("search", i) for i in range(8)])
    worker = await run_worker(s)
    assert worker.jobs_retried > 0  # some gave their slot back
    results = [await producer.result(i) for i in ids]
    assert all(r is not None and r.status == "succeeded" and r.runs == 1 for r in results), results
    assert sim_admin(sim, "/_sim/stats")["calls"]["gpt-4.1"] == 16  # each called once
    assert await producer.queued() == 0


async def test_a_worker_with_fair_share_off_still_runs_what_waits_in_sub_queues(producer, fair_settings):
    ids = await producer.enqueue_many([job("billing", i) for i in range(3)])  # queued while it was on
    await run_worker(fair_settings.model_copy(update={"fair_share": False}))
    results = [await producer.result(i) for i in ids]
    assert all(r is not None and r.status == "succeeded" for r in results)
    assert await producer.queued() == 0


def batch_line(i: int, source: str) -> dict:
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": f"{source} line {i}"}], "max_tokens": 20}
    return {"custom_id": f"{source}{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


async def test_two_sources_batches_interleave_in_the_bulk_lane_by_weight_behind_interactive_work(
    fair_settings, make_producer
):
    """Two batches from billing (weight 3) and search (1): their lines start 3:1 while both
    wait, after every interactive job of either source; each line runs once."""
    s = fair_settings.model_copy(update={"worker_concurrency": 1})
    search = await make_producer(s, source="search", own_settings=True)
    billing = await make_producer(s, source="billing", own_settings=True)
    first = await search.batches.submit([batch_line(i, "search") for i in range(16)])  # search's goes first
    second = await billing.batches.submit([batch_line(i, "billing") for i in range(24)])
    interactive = [await p.enqueue(job(p.source or "", i)) for p in (search, billing) for i in range(3)]
    await run_worker(s)
    lines = {}
    for batch, n in ((first, 16), (second, 24)):
        for i in range(n):
            result = await search.result(wb.line_job_id(batch.id, i + 1))
            assert result is not None and result.status == "succeeded" and result.runs == 1, result
            lines[result.job_id] = ("search" if batch is first else "billing", result.started_at)
    jobs = [await search.result(i) for i in interactive]
    assert all(r is not None and r.status == "succeeded" for r in jobs)
    assert max(r.started_at for r in jobs if r) < min(at for _, at in lines.values())  # bulk stays behind
    order = [source for source, _ in sorted(lines.values(), key=lambda v: v[1])]
    # while both batches wait (billing's 24 lines last 32 picks), 3:1: six of any eight (a line
    # tied with another's may go either side of it)
    assert 23 <= order[:32].count("billing") <= 24, order
    for start in range(0, 25):
        assert 5 <= order[start : start + 8].count("billing") <= 7, order
