"""The response cache against a real Redis and the simulator: hits and misses, which calls it
answers, its key, its TTL, single flight for racing duplicates, and what a hit costs."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from harness.wait import wait_until_async
from producers.api import Producer
from tests.helpers import run_worker, sim_admin
from worker.calls import cache
from worker.contract.keys import CACHE_LOCK_PREFIX, CACHE_PREFIX, model_key, spend_saved_key
from worker.contract.models import ChatJob
from worker.contract.settings import RateLimit
from worker.limits.limiter import Limiter


def calls(sim, model: str = "gpt-4.1") -> int:
    return sim_admin(sim, "/_sim/stats")["calls"].get(model, 0)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def run_one(producer, settings, **job):
    """Enqueue one chat job, run the worker until the queue is empty, return its result."""
    job.setdefault("model", "gpt-4.1")
    job_id = await producer.chat(**job)
    await run_worker(settings)
    return await producer.result(job_id)


async def test_a_hit_is_the_stored_answer_costs_nothing_and_records_the_saving(producer, settings, sim, redis):
    hits, misses = (
        sample("llm_router_cache_hits_total", model="gpt-4.1"),
        sample("llm_router_cache_misses_total", model="gpt-4.1"),
    )
    saved = sample("llm_router_cache_saved_usd_total", model="gpt-4.1")
    first = await run_one(producer, settings, message="What is 2+2?", temperature=0, max_tokens=20)
    second = await run_one(producer, settings, message="What is 2+2?", temperature=0, max_tokens=20)

    assert first.status == second.status == "succeeded"
    assert not first.cached and first.cost > 0 and first.cost_source == "gateway" and first.saved_cost is None
    assert second.cached and second.content == first.content and second.model == "gpt-4.1"
    assert second.cost == 0 and second.cost_source == "cache" and second.saved_cost == pytest.approx(first.cost)
    assert second.usage == first.usage and second.attempts == []  # no upstream call
    assert calls(sim) == 1
    # spend counts the one real call; the saving is kept per day and model for the spend report
    assert await producer.store.spend() == pytest.approx({"gpt-4.1": first.cost})
    saved_today = await redis.hgetall(spend_saved_key())
    assert {k.decode(): float(v) for k, v in saved_today.items()} == pytest.approx({"gpt-4.1": first.cost})
    assert sample("llm_router_cache_hits_total", model="gpt-4.1") == hits + 1
    assert sample("llm_router_cache_misses_total", model="gpt-4.1") == misses + 1
    assert sample("llm_router_cache_saved_usd_total", model="gpt-4.1") == pytest.approx(saved + first.cost)


async def test_only_deterministic_calls_by_default_and_jobs_that_ask(producer, settings, sim):
    for _ in range(2):
        assert not (await run_one(producer, settings, message="warm", temperature=0.7)).cached
    assert calls(sim) == 2  # temperature 0.7: not cached
    for _ in range(2):
        assert not (await run_one(producer, settings, message="unset")).cached
    assert calls(sim) == 4  # no temperature: the model's default, not deterministic
    results = [await run_one(producer, settings, message="ask", temperature=0.7, cache=True) for _ in range(2)]
    assert [r.cached for r in results] == [False, True] and calls(sim) == 5


async def test_a_job_opts_out_and_cache_mode_off_and_all(producer, settings, sim):
    results = [await run_one(producer, settings, message="opt out", temperature=0, cache=False) for _ in range(2)]
    assert [r.cached for r in results] == [False, False] and calls(sim) == 2

    off = settings.model_copy(update={"cache_mode": "off"})
    results = [await run_one(producer, off, message="off", temperature=0, cache=True) for _ in range(2)]
    assert [r.cached for r in results] == [False, False] and calls(sim) == 4

    every = settings.model_copy(update={"cache_mode": "all"})
    results = [await run_one(producer, every, message="all", temperature=1.2) for _ in range(2)]
    assert [r.cached for r in results] == [False, True] and calls(sim) == 5
    opted_out = await run_one(producer, every, message="all", temperature=1.2, cache=False)
    assert not opted_out.cached and calls(sim) == 6


async def test_streamed_calls_are_never_cached(producer, settings, sim, redis):
    results = [await run_one(producer, settings, message="stream me", temperature=0, stream=True) for _ in range(2)]
    assert [r.cached for r in results] == [False, False] and all(r.ttft_s is not None for r in results)
    assert calls(sim) == 2 and await redis.keys(CACHE_PREFIX + "*") == []


async def test_the_key_is_every_parameter_that_changes_the_answer(producer, settings, sim):
    base = {"message": "key", "temperature": 0, "max_tokens": 30}
    assert not (await run_one(producer, settings, **base)).cached
    # labels and storage options do not change the answer: a hit
    assert (await run_one(producer, settings, **base, user="u-1", metadata={"team": "x"}, service_tier="flex")).cached
    # anything else does: a miss each
    for changed in ({"max_tokens": 31}, {"seed": 7}, {"model": "gpt-4o"}, {"system": "Be brief"}, {"n": 2}):
        assert not (await run_one(producer, settings, **{**base, **changed})).cached, changed
    assert calls(sim) + calls(sim, "gpt-4o") == 6
    # the order the parameters come in does not matter
    payload = {"messages": [{"role": "user", "content": "x"}], "temperature": 0.0, "seed": 1}
    assert cache.request_digest("m", payload) == cache.request_digest("m", dict(reversed(payload.items())))
    assert cache.request_digest("m", payload) != cache.request_digest("n", payload)


async def test_a_cached_answer_expires_after_cache_ttl_s(producer, settings, sim, redis):
    # a hit while the entry lives (a TTL no loaded machine outruns: a 1 s entry could expire
    # before the second job's worker even started, which made this test fail at random) ...
    kept = settings.model_copy(update={"cache_ttl_s": 60})
    assert not (await run_one(producer, kept, message="kept", temperature=0)).cached
    [entry] = await redis.keys(CACHE_PREFIX + "*")
    assert 1000 < await redis.pttl(entry) <= 60_000
    assert (await run_one(producer, kept, message="kept", temperature=0)).cached
    # ... and an entry of CACHE_TTL_S=1 expires after it, then it is called again
    short = settings.model_copy(update={"cache_ttl_s": 1})
    assert not (await run_one(producer, short, message="ttl", temperature=0)).cached
    [entry] = set(await redis.keys(CACHE_PREFIX + "*")) - {entry}
    assert 0 < await redis.pttl(entry) <= 1000

    async def expired() -> bool:
        return await redis.exists(entry) == 0

    await wait_until_async(expired, 5, "the cache entry to expire")
    again = await run_one(producer, short, message="ttl", temperature=0)
    assert not again.cached and calls(sim) == 3


async def test_racing_duplicates_call_the_gateway_once(producer, settings, sim, redis):
    sim_admin(sim, "/_sim/config", {"latency_ms": 300})
    job = ChatJob(model="gpt-4.1", messages=[{"role": "user", "content": "dup"}], temperature=0)
    ids = await producer.enqueue_many([job] * 20)
    await run_worker(settings)
    results = [await producer.result(i) for i in ids]
    assert all(r.status == "succeeded" and r.content == "[gpt-4.1] You said: dup" for r in results)
    assert sum(not r.cached for r in results) == 1 and calls(sim) == 1
    assert sim_admin(sim, "/_sim/stats")["peak_concurrency"] == 1
    assert await redis.keys(CACHE_LOCK_PREFIX + "*") == []  # the lock was dropped


async def test_racing_duplicates_across_worker_processes_call_once(producer, settings, sim, workers):
    sim_admin(sim, "/_sim/config", {"latency_ms": 500})
    for _ in range(2):
        workers(settings)

    async def both_up() -> bool:
        return await producer.workers() == 2

    await wait_until_async(both_up, 15, "two workers up", interval=0.1)
    job = ChatJob(model="gpt-4.1", messages=[{"role": "user", "content": "dup across"}], temperature=0)
    ids = await producer.enqueue_many([job] * 30)
    results = [await producer.wait(i, timeout=30) for i in ids]
    assert all(r.status == "succeeded" for r in results)
    assert sum(not r.cached for r in results) == 1 and calls(sim) == 1
    stats = sim_admin(sim, "/_sim/stats")
    assert await producer.store.spend() == pytest.approx(stats["charged"])


async def test_a_failed_leader_stores_nothing_and_a_waiter_calls(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "latency_ms": 300, "fail_next": [400]})
    job = ChatJob(model="gpt-4.1", messages=[{"role": "user", "content": "first fails"}], temperature=0)
    ids = await producer.enqueue_many([job] * 10)
    await run_worker(settings)
    results = [await producer.result(i) for i in ids]
    assert sorted(r.status for r in results) == ["failed"] + ["succeeded"] * 9
    assert [r.error.type for r in results if r.status == "failed"] == ["bad_request"]  # not stored, not served
    assert sum(r.status == "succeeded" and not r.cached for r in results) == 1
    assert calls(sim) == 2


async def test_a_dead_holders_lock_expires_and_a_waiter_takes_over(producer, settings, sim, redis):
    payload = {"messages": [{"role": "user", "content": "orphan"}], "temperature": 0.0}
    digest = cache.request_digest("gpt-4.1", payload, source="tests")  # the producer's source
    await redis.set(CACHE_LOCK_PREFIX + digest, "a-worker-that-died", px=700)  # it never publishes
    started = time.monotonic()
    result = await run_one(producer, settings, message="orphan", temperature=0)
    assert result.status == "succeeded" and not result.cached and calls(sim) == 1
    assert time.monotonic() - started >= 0.6  # it waited for the lock, then called


async def test_a_lookup_sent_again_still_leads_and_another_caller_waits(settings, redis):
    """A lookup whose answer was lost runs a second time (the client resends the batch after a
    connection error): it finds its own lock and leads, where it waited on itself until the lock
    expired; a lookup with another token waits."""
    responses = cache.ResponseCache(redis, settings)
    first = await responses.lookup("d" * 64, "gpt-4.1", "token-a")
    again = await responses.lookup("d" * 64, "gpt-4.1", "token-a")
    other = await responses.lookup("d" * 64, "gpt-4.1", "token-b")
    assert (first.status, again.status, other.status) == ("lead", "lead", "wait")
    assert other.wait_s > 0


async def test_a_hit_takes_no_rate_limit_slot(producer, settings, sim, redis):
    limited = settings.model_copy(update={"rate_limits": {"gpt-4.1": RateLimit(rpm=1)}})
    first = await run_one(producer, limited, message="limited", temperature=0)
    booked = await redis.hget(model_key("gpt-4.1"), "r")
    second = await asyncio.wait_for(run_one(producer, limited, message="limited", temperature=0), 10)
    assert first.status == "succeeded" and second.cached and second.attempts == []
    assert await redis.hget(model_key("gpt-4.1"), "r") == booked  # nothing booked for the hit
    # a call would have had to wait a minute for its slot (past max_wait_s)
    admission = await Limiter(redis, limited).admit("gpt-4.1", 10, limited.max_wait_s)
    assert admission.status == "wait" and admission.wait_s > 50
    assert calls(sim) == 1


async def test_compare_answers_each_model_from_the_cache(producer, settings, sim):
    results = []
    for _ in range(2):
        job_id = await producer.compare(["gpt-4.1", "gpt-4o"], "compare me", temperature=0)
        await run_worker(settings)
        results.append(await producer.result(job_id))
    first, second = results
    assert [a.cached for a in first.answers] == [False, False] and first.cost > 0
    assert [a.cached for a in second.answers] == [True, True] and second.status == "succeeded"
    assert second.cost == 0 and second.cost_source == "cache" and second.attempts == []
    assert [a.saved_cost for a in second.answers] == pytest.approx([a.cost for a in first.answers])
    assert calls(sim) == calls(sim, "gpt-4o") == 1


async def test_duplicated_batch_lines_call_once_per_distinct_request(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"latency_ms": 200})

    def line(i: int, prompt: str, **extra: object) -> dict:
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": prompt}], "temperature": 0, **extra}
        return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}

    lines = [line(i, f"question {i % 3}") for i in range(30)]
    lines.append(line(30, "question 0", llm_router={"cache": False}))  # opted out: its own call
    batch = await producer.batches.submit(lines)
    await run_worker(settings)
    batch = await producer.batches.get(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 31
    out = [entry async for entry in producer.batches.results(batch.id)]
    assert sum(not o["llm_router"]["cached"] for o in out) == 4 and calls(sim) == 4
    assert batch.cost_usd == pytest.approx(sim_admin(sim, "/_sim/stats")["charged_total"])
    assert {o["response"]["body"]["choices"][0]["message"]["content"] for o in out[:3]} == {
        f"[gpt-4.1] You said: question {i}" for i in range(3)
    }


async def test_each_source_has_its_own_cache_unless_cache_across_sources(settings, sim):
    """A hit would tell a source that another asked the same question, what it was answered and
    what it cost: by default each source has its own cache."""
    async with (
        Producer(settings.redis_url, queue_name=settings.queue_name, source="alpha") as alpha,
        Producer(settings.redis_url, queue_name=settings.queue_name, source="beta") as beta,
    ):
        ask = {"message": "a private question", "temperature": 0, "max_tokens": 20}
        results = [await run_one(p, settings, **ask) for p in (alpha, beta, alpha, beta)]
        assert [r.cached for r in results] == [False, False, True, True] and calls(sim) == 2
        shared = settings.model_copy(update={"cache_across_sources": True})
        ask["message"] = "a question for everyone"
        results = [await run_one(p, shared, **ask) for p in (alpha, beta)]
        assert [r.cached for r in results] == [False, True] and calls(sim) == 3
