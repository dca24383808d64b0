"""Chaos with real processes: `llm-router worker` processes, a real redis-server (with AOF where
it restarts), the simulator. After each scenario every job is succeeded or dead-lettered, none
is stuck, and the spend in Redis equals what the simulator charged."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time

import pytest

from harness.redis_server import PrivateRedis
from harness.wait import wait_until_async
from producers.api import Producer
from tests.helpers import sim_admin
from worker.contract.settings import RateLimit


def in_flight(sim) -> int:
    return sim_admin(sim, "/_sim/stats")["in_flight"]


@pytest.fixture
def chaos_settings(settings):
    return settings.model_copy(update={"lease_s": 2.0, "poll_delay_s": 0.02, "worker_concurrency": 10})


@pytest.fixture
async def producer(make_producer, chaos_settings):
    return await make_producer(chaos_settings)


async def all_results(producer, ids, timeout, what="every job's result"):
    async def done():  # one round trip a poll: the simulator shares this process (and its GIL)
        return await producer.redis.exists(*[f"llm-router:result:{i}" for i in ids]) == len(ids)

    await wait_until_async(done, timeout, what)
    return [await producer.result(i) for i in ids]


async def assert_books_balance(producer, sim):
    charged = sim_admin(sim, "/_sim/stats")["charged"]
    assert await producer.store.spend() == pytest.approx({m: c for m, c in charged.items() if c})


async def busy_worker(producer, sim, workers, settings, jobs: int, latency_ms: int):
    """A worker process in the middle of `jobs` slow calls: (their job ids, the worker)."""
    sim_admin(sim, "/_sim/config", {"latency_ms": latency_ms})
    ids = [await producer.chat("gpt-4.1", f"q{i}") for i in range(jobs)]
    worker = workers(settings)
    await wait_until_async(lambda: in_flight(sim) == jobs, 15, f"all {jobs} calls to start")
    return ids, worker


async def test_sigkill_mid_call_reruns_within_the_lease_and_counts_cost_once(producer, chaos_settings, sim, workers):
    ids, a = await busy_worker(producer, sim, workers, chaos_settings, jobs=6, latency_ms=1500)
    a.send(signal.SIGKILL)
    killed_at = time.time()
    workers(chaos_settings)
    rs = await all_results(producer, ids, 20)
    assert all(r.status == "succeeded" and r.runs == 2 for r in rs)
    # stated bound: LEASE_S (+ a poll, + worker B's start-up) to start again, then the call itself
    started_again = [r.started_at.timestamp() - killed_at for r in rs]
    assert max(started_again) <= chaos_settings.lease_s + 3.0, started_again
    assert all(len(r.attempts) == 1 for r in rs)  # the killed calls never finished: nothing billed, nothing counted
    assert sim_admin(sim, "/_sim/stats")["calls"]["gpt-4.1"] == 12
    await assert_books_balance(producer, sim)


async def test_sigterm_lets_in_flight_calls_finish_within_the_grace(producer, chaos_settings, sim, workers):
    ids, a = await busy_worker(
        producer, sim, workers, chaos_settings.model_copy(update={"shutdown_grace_s": 5}), jobs=4, latency_ms=1000
    )
    a.send(signal.SIGTERM)

    # arq's own log line on the signal
    await wait_until_async(lambda: "allow_pick_jobs to `False`" in a.log(), 5, "worker A to start draining")
    late = await producer.chat("gpt-4.1", "enqueued during the drain")
    assert await asyncio.to_thread(a.wait, 10) == 0
    rs = [await producer.result(i) for i in ids]
    assert all(r is not None and r.status == "succeeded" and r.runs == 1 for r in rs)
    assert await producer.result(late) is None and await producer.queued() == 1  # not picked while draining
    await assert_books_balance(producer, sim)


async def test_sigterm_past_the_grace_puts_jobs_back_for_another_worker(producer, chaos_settings, sim, workers):
    ids, a = await busy_worker(
        producer, sim, workers, chaos_settings.model_copy(update={"shutdown_grace_s": 0.5}), jobs=3, latency_ms=3000
    )
    a.send(signal.SIGTERM)
    assert await asyncio.to_thread(a.wait, 10) == 0
    assert await producer.queued() == 3 and not any([await producer.result(i) for i in ids])
    sim_admin(sim, "/_sim/config", {"latency_ms": 0})
    workers(chaos_settings)
    rs = await all_results(producer, ids, 15)
    assert all(r.status == "succeeded" and r.runs == 2 for r in rs)
    await assert_books_balance(producer, sim)  # the cancelled calls were not billed


async def test_redis_crash_and_restart_with_aof_loses_no_job(sim, chaos_settings, workers, tmp_path):
    with PrivateRedis(extra_args=("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))) as r:
        s = chaos_settings.model_copy(update={"redis_url": r.url, "worker_concurrency": 5})
        sim_admin(sim, "/_sim/config", {"latency_ms": 200})
        async with Producer(r.url, queue_name=s.queue_name) as producer:
            ids = [await producer.chat("gpt-4o-mini", f"q{i}") for i in range(30)]
            workers(s)
            workers(s)
            await wait_until_async(lambda: in_flight(sim) >= 5, 15, "calls to start")
            r.kill()
            await asyncio.sleep(1.0)  # Redis is down for a second: workers must ride it out
            r.start()
            await producer.redis.connection_pool.disconnect()
            rs = await all_results(producer, ids, 60)
            assert all(x.status == "succeeded" for x in rs)
            assert await producer.queued() == 0
            await assert_books_balance(producer, sim)


async def test_shared_rpm_limit_across_worker_processes(producer, chaos_settings, sim, workers):
    per_window, window = 20, 2.0  # the simulator allows 20 calls in any 2 s: 600 a minute
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "rpm": per_window, "rate_window_s": window})
    # The headroom is what absorbs the time between a booked slot and the call's arrival upstream
    # (a worker woken late, the simulator's thread waiting for the GIL): window * h / (1 - h) of
    # delay before a 21st call can land in a window. The default 0.02 of a 60 s window is 1.2 s;
    # of this 2 s window only 41 ms, less than a loaded machine's scheduling delays (that made
    # the test fail at random): 0.15 gives 0.35 s.
    headroom = 0.15
    s = chaos_settings.model_copy(
        update={
            "rate_limits": {"gpt-4o-mini": RateLimit(rpm=per_window * 60 / window)},
            "rate_limit_headroom": headroom,
        }
    )
    ids = [await producer.chat("gpt-4o-mini", f"q{i}", fallbacks=[]) for i in range(60)]
    for _ in range(3):
        workers(s)
    rs = await all_results(producer, ids, 40)
    assert all(x.status == "succeeded" for x in rs)
    stats = sim_admin(sim, "/_sim/stats")
    arrivals = sorted(stats["arrivals"]["gpt-4o-mini"])
    assert stats["rate_limited"] == 0
    worst = max(sum(1 for t in arrivals if start <= t < start + window) for start in arrivals)
    assert worst <= per_window  # never over the limit in any window
    achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert achieved >= 0.9 * (1 - headroom) * per_window / window, achieved  # and close to the rate it runs at
    await assert_books_balance(producer, sim)


async def test_shared_tpm_limit_books_estimates_and_settles_real_usage(producer, chaos_settings, sim, workers):
    per_window, window = 600, 2.0  # tokens (prompt + completion) in any 2 s
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "tpm": per_window, "rate_window_s": window})
    s = chaos_settings.model_copy(update={"rate_limits": {"gpt-4o-mini": RateLimit(tpm=per_window * 60 / window)}})
    # max_tokens 200 is booked up front; each call really uses ~15 tokens: settling gives the rest back
    ids = [await producer.chat("gpt-4o-mini", f"q{i}", fallbacks=[], max_tokens=200) for i in range(40)]
    for _ in range(2):
        workers(s)
    rs = await all_results(producer, ids, 40)
    assert all(x.status == "succeeded" for x in rs)
    stats = sim_admin(sim, "/_sim/stats")
    assert stats["rate_limited"] == 0
    # Booked at ~210 tokens each and never given back, the limiter itself would hold the 40 calls
    # to at least 40 * 210 tokens / 300 tokens/s = 28 s, however fast the machine; settled to what
    # they used (~12 each) they ran in 2.3 s (measured). The bound is half the unsettled minimum:
    # it tells the two behaviours apart, it is not a speed target (a machine 6x slower passes).
    unsettled_s = len(ids) * 210 / (per_window / window)
    elapsed = max(x.finished_at for x in rs) - min(x.started_at for x in rs)
    assert elapsed.total_seconds() < unsettled_s / 2, (elapsed, unsettled_s)


async def test_429_storm_and_5xx_bursts_across_processes(producer, chaos_settings, sim, workers):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "error_rates": {"429": 0.4}, "retry_after_s": 0.2})
    sim_admin(sim, "/_sim/config", {"model": "qwen-max", "error_rates": {"503": 0.3, "502": 0.2}})
    s = chaos_settings.model_copy(update={"circuit_failures": 1000})
    ids = [await producer.chat("gpt-4o-mini", f"r{i}", fallbacks=["gemini-2.0-flash"]) for i in range(20)]
    ids += [await producer.chat("qwen-max", f"s{i}", fallbacks=["deepseek-v3"]) for i in range(20)]
    for _ in range(2):
        workers(s)
    rs = await all_results(producer, ids, 60)
    assert all(r.status == "succeeded" for r in rs)  # every chain ends on a model that answered
    assert not await producer.dead_letters.ids() and await producer.queued() == 0
    stats = sim_admin(sim, "/_sim/stats")
    assert stats["rate_limited"] > 0 and stats["statuses"].get("503", 0) > 0
    for r in rs:  # every retry after a 429 waited its Retry-After, in whichever process
        for before, after in itertools.pairwise(r.attempts):
            if before.error and before.error.type == "rate_limit" and after.model == before.model:
                assert after.at - (before.at + before.latency_s) >= 0.18, r.attempts
    await assert_books_balance(producer, sim)
