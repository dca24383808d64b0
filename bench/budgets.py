"""Budgets benchmark, in one run:

(1) the job path's cost of a reservation: N chat jobs through the service (in-process worker,
    zero-latency simulator in its own process) without budgets, then with a global, a source
    and a model budget that every call reserves against and settles; R rounds, each a pair
    run back to back in alternating order (AB, BA, ...), the median of the pairs' ratios
    (a shared, noisy machine drifts between pairs, much less within one);
(2) the race: 4 `llm-router worker` processes of 50 concurrency against a daily budget of B
    and more work than it pays for (jobs of worst case w): what the simulator charged (at
    most B + w, at least B - a few w) and how many jobs were refused.

  python -m bench.budgets [--jobs 1000] [--rounds 6] [--concurrency 50] [--race-jobs 400] [--race-budget-w 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.dispatch import bench_settings, drain, start_sim
from bench.ratelimit import wait_ready
from harness.processes import WorkerProcess
from harness.redis_server import PrivateRedis
from harness.sim_admin import sim_admin
from harness.wait import wait_until_async
from producers.api import Producer
from worker.contract.models import ChatJob
from worker.contract.settings import BudgetConfig, Price, Settings
from worker.limits.tokens import input_bound

MODEL = "gpt-4.1"
# The simulator's own gpt-4.1 price: the worst case is then close to what a call costs.
SIM_PRICE = Price(input=0.002, output=0.008)
SOURCE = "bench"


def jobs(n: int, text: str = "prompt", max_tokens: int | None = None) -> list[ChatJob]:
    extra = {"max_tokens": max_tokens} if max_tokens else {}
    return [
        ChatJob(
            model=MODEL,
            messages=[{"role": "user", "content": f"{text} {i}"}],
            source=SOURCE,
            fallbacks=[],
            **extra,
        )
        for i in range(n)
    ]


async def job_path(settings: Settings, n: int) -> tuple[float, float]:
    """(jobs/s, Redis CPU µs per job: every command's time, from INFO commandstats)."""
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        await producer.redis.flushdb()
        ids = await producer.enqueue_many(jobs(n, max_tokens=50))
        await producer.redis.config_resetstat()
        rate = n / await drain(settings)
        stats = await producer.redis.info("commandstats")
        done = [await producer.result(i) for i in ids[:: max(n // 50, 1)]]
    assert all(r is not None and r.status == "succeeded" for r in done), "benchmark jobs failed"
    return rate, sum(float(v["usec"]) for v in stats.values()) / n


async def race(settings: Settings, base_url: str, n: int, budget_w: float, logs: Path) -> dict[str, float]:
    text = "word " * 120
    sim_admin(base_url, "/_sim/reset", {})
    sim_admin(base_url, "/_sim/config", {"model": "*", "latency_ms": 30})
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        await producer.redis.flushdb()
        # w of one job, as the workers compute it: the prompt's bound (its body's bytes) and
        # max_tokens at SIM_PRICE
        body = {"messages": [{"role": "user", "content": f"{text} 0"}], "max_tokens": 100, "model": MODEL}
        w = (input_bound(body) * SIM_PRICE.input + 100 * SIM_PRICE.output) / 1000
        budget = budget_w * w
        s = settings.model_copy(update={"budgets": BudgetConfig(daily_usd=budget)})
        ids = await producer.enqueue_many(jobs(n, text, max_tokens=100))
        procs = [WorkerProcess(s, logs / f"race{i}.log") for i in range(4)]
        started = time.perf_counter()
        try:
            await wait_ready(procs)

            async def finished() -> bool:
                async with producer.redis.pipeline(transaction=False) as pipe:
                    for job_id in ids:
                        pipe.exists(f"llm-router:result:{job_id}")
                    return all(await pipe.execute())

            await wait_until_async(finished, 300, "every race job's result", interval=0.2)
            took = time.perf_counter() - started
            results = [await producer.result(i) for i in ids]
        finally:
            for p in procs:
                p.stop()
    refused = [r for r in results if r is not None and r.status == "failed"]
    assert all(r.error is not None and r.error.type == "budget" for r in refused), "a race job failed otherwise"
    needed = {r.error.budget.needed_usd for r in refused if r.error and r.error.budget}
    stats = sim_admin(base_url, "/_sim/stats")
    return {
        "B": budget,
        "w": max(needed) if needed else w,
        "charged": stats["charged_total"],
        "calls": stats["calls"].get(MODEL, 0),
        "refused": len(refused),
        "jobs": n,
        "seconds": took,
    }


async def run(n: int, rounds: int, concurrency: int, race_jobs: int, budget_w: float) -> None:
    sim, base_url = start_sim()
    try:
        with PrivateRedis() as redis, tempfile.TemporaryDirectory() as logs:
            plain = bench_settings(
                base_url,
                redis.url,
                worker_concurrency=concurrency,
                poll_delay_s=0.01,
                prices={MODEL: SIM_PRICE},
            )
            budgeted = plain.model_copy(
                update={"budgets": BudgetConfig(daily_usd=1e6, sources={SOURCE: 1e6}, models={MODEL: 1e6})}
            )
            await job_path(plain, 200)  # warm up
            pairs: list[tuple[float, float]] = []
            redis_us: list[tuple[float, float]] = []
            for i in range(rounds):
                if i % 2:
                    b = await job_path(budgeted, n)
                    a = await job_path(plain, n)
                else:
                    a = await job_path(plain, n)
                    b = await job_path(budgeted, n)
                pairs.append((a[0], b[0]))
                redis_us.append((a[1], b[1]))
            race_settings = plain.model_copy(
                update={"worker_concurrency": 50, "lease_s": 3.0, "poll_delay_s": 0.02, "max_wait_s": 5}
            )
            figures = await race(race_settings, base_url, race_jobs, budget_w, Path(logs))
    finally:
        sim.stop()
    ratios = sorted(b / a for a, b in pairs)
    print(f"jobs={n} rounds={rounds} concurrency={concurrency} cores={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    print(f"(1) job path without budgets  {statistics.median(a for a, _ in pairs):8.0f} jobs/s (median)")
    print(f"    with 3 budgets per call   {statistics.median(b for _, b in pairs):8.0f} jobs/s (median)")
    shown = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"    ratio, median of {rounds} pairs: {statistics.median(ratios):.3f} (pairs: {shown})")
    us_a, us_b = statistics.median(a for a, _ in redis_us), statistics.median(b for _, b in redis_us)
    print(f"    Redis CPU per job: {us_a:.0f} µs without, {us_b:.0f} µs with (+{us_b - us_a:.0f} µs)")
    f = figures
    left_w = (f["B"] - f["charged"]) / f["w"]
    print(f"(2) race: 4 processes x 50, B=${f['B']:.6f} w=${f['w']:.6f} charged=${f['charged']:.6f}")
    print(f"    charged / B = {f['charged'] / f['B']:.4f}, B - charged = {left_w:.2f} w (goal: charged <= B + w)")
    print(f"    calls={f['calls']:.0f} refused={f['refused']:.0f}/{f['jobs']:.0f} in {f['seconds']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--race-jobs", type=int, default=400)
    parser.add_argument("--race-budget-w", type=float, default=60, help="the race's budget B, in worst cases w")
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.rounds, args.concurrency, args.race_jobs, args.race_budget_w))


if __name__ == "__main__":
    main()
