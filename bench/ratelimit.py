"""Rate-limit benchmark: N jobs against a simulator enforcing R requests per minute, in one run:

  (a) llm-router:  4 `llm-router worker` processes sharing RATE_LIMITS through Redis
  (a') the same with the simulator's window known (RATE_LIMIT_WINDOW_S, RATE_LIMIT_JITTER_MS)
  (b) naive:       one asyncio process, the same concurrency, exponential backoff on 429
                   (1 s doubling, jittered, capped at 30 s), no shared limiter

For each: achieved rate / R, 429s / calls, and drain time / (N/R), where drain is from the
moment N jobs are enqueued (workers already up) to the last result. Goals for (a):
>= 0.97 of R, < 1 % 429s, drain <= 1.05 x N/R; (a'): >= 0.99 of R, no 429. The simulator's window is scaled down
(`--window`) so a run takes seconds, not hours; the limit per minute is the same.

    python -m bench.ratelimit [--jobs 300] [--rpm 600] [--window 10] [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from bench.dispatch import KEY, bench_settings, start_sim
from harness.processes import WorkerProcess
from harness.redis_server import PrivateRedis
from harness.sim_admin import sim_admin
from harness.wait import wait_until_async
from producers.api import Producer
from worker.calls import errors
from worker.calls.client import AIsaClient
from worker.contract.models import ChatJob
from worker.contract.settings import RateLimit, Settings

MODEL = "gpt-4o-mini"


def prompts(n: int) -> list[str]:
    return [f"overnight prompt {i}" for i in range(n)]


async def wait_ready(procs: list[WorkerProcess], timeout: float = 30) -> None:
    await wait_until_async(
        lambda: all("llm-router worker up" in p.log() for p in procs),
        timeout,
        lambda: "the workers to start: " + procs[0].log()[-2000:],
        interval=0.1,
    )


async def service(settings: Settings, n: int, workers: int, logs: Path) -> float:
    logs.mkdir(exist_ok=True)
    procs = [WorkerProcess(settings, logs / f"worker{i}.log") for i in range(workers)]
    try:
        await wait_ready(procs)
        async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
            jobs = [ChatJob(model=MODEL, messages=[{"role": "user", "content": p}], fallbacks=[]) for p in prompts(n)]
            started = time.perf_counter()
            ids = await producer.enqueue_many(jobs)
            pending = set(ids)

            async def all_done() -> bool:  # looks up only the jobs still pending
                async with producer.redis.pipeline(transaction=False) as pipe:
                    batch = list(pending)
                    for job_id in batch:
                        pipe.exists(f"llm-router:result:{job_id}")
                    found = await pipe.execute()
                pending.difference_update(j for j, f in zip(batch, found, strict=True) if f)
                return not pending

            # bounded at 3x the ideal drain (N/R), so a stuck job ends the run instead of hanging it
            await wait_until_async(
                all_done,
                max(60.0, 3 * n / (settings.rate_limits[MODEL].rpm / 60)),
                lambda: f"every result ({len(pending)} of {n} still pending)",
            )
            drain = time.perf_counter() - started
            failed = [r for r in [await producer.result(i) for i in ids] if r.status != "succeeded"]
        if failed:
            raise RuntimeError(f"{len(failed)} jobs failed, e.g. {failed[0].error}")
        return drain
    finally:
        for p in procs:
            p.stop()


async def naive(base_url: str, n: int, concurrency: int) -> float:
    semaphore = asyncio.Semaphore(concurrency)
    async with AIsaClient(base_url, KEY, max_connections=concurrency) as client:

        async def one(prompt: str) -> None:
            async with semaphore:
                for retry in range(30):
                    try:
                        await client.chat({"model": MODEL, "messages": [{"role": "user", "content": prompt}]})
                        return
                    except errors.RateLimitError:
                        await asyncio.sleep(min(30.0, 2.0**retry) * random.uniform(0.75, 1.25))
                raise RuntimeError("gave up")

        started = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts(n)))
    return time.perf_counter() - started


def report(name: str, n: int, rpm: float, drain: float, stats: dict) -> None:
    calls = sum(stats["calls"].values())
    ideal = n / (rpm / 60)
    print(
        f"{name:<12} achieved/R {n / drain / (rpm / 60):5.3f}   429s/calls {stats['rate_limited'] / calls:6.2%} "
        f"({stats['rate_limited']}/{calls})   drain/(N/R) {drain / ideal:5.3f}   ({drain:.1f}s for {n} jobs)"
    )


async def run(n: int, rpm: float, window: float, workers: int, jitter_ms: float) -> None:
    sim, base_url = start_sim()
    per_window = round(rpm * window / 60)
    try:
        with PrivateRedis() as redis, tempfile.TemporaryDirectory() as logs:
            settings = bench_settings(
                base_url, redis.url, worker_concurrency=50, poll_delay_s=0.02, rate_limits={MODEL: RateLimit(rpm=rpm)}
            )
            sim_admin(base_url, "/_sim/config", {"model": MODEL, "rpm": per_window, "rate_window_s": window})
            drain = await service(settings, n, workers, Path(logs))
            ours = sim_admin(base_url, "/_sim/stats")
            sim_admin(base_url, "/_sim/reset", {})
            sim_admin(base_url, "/_sim/config", {"model": MODEL, "rpm": per_window, "rate_window_s": window})
            async with Redis.from_url(redis.url) as r:  # the first run's slots must not delay the second's
                await r.flushall()
            known = settings.model_copy(update={"rate_limit_window_s": window, "rate_limit_jitter_ms": jitter_ms})
            known_drain = await service(known, n, workers, Path(logs) / "known")  # its own logs: see wait_ready
            known_stats = sim_admin(base_url, "/_sim/stats")
            sim_admin(base_url, "/_sim/reset", {})
            sim_admin(base_url, "/_sim/config", {"model": MODEL, "rpm": per_window, "rate_window_s": window})
            naive_drain = await naive(base_url, n, 50 * workers)
            theirs = sim_admin(base_url, "/_sim/stats")
    finally:
        sim.stop()
    print(
        f"jobs={n} R={rpm:g}/min (simulator: {per_window} per {window:g}s window) workers={workers} "
        f"cores={os.cpu_count()}"
    )
    report("llm-router", n, rpm, drain, ours)
    report(f"  window {window:g}s", n, rpm, known_drain, known_stats)
    report("naive", n, rpm, naive_drain, theirs)
    print(
        "goals for llm-router: achieved/R >= 0.97, 429s < 1 %, drain/(N/R) <= 1.05; "
        f"with the window known (RATE_LIMIT_WINDOW_S={window:g}, RATE_LIMIT_JITTER_MS={jitter_ms:g}): >= 0.99, 0 %"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rpm", type=float, default=600)
    parser.add_argument("--window", type=float, default=10, help="the simulator's rate window in seconds")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jitter-ms", type=float, default=100, help="RATE_LIMIT_JITTER_MS of the known-window run")
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.rpm, args.window, args.workers, args.jitter_ms))


if __name__ == "__main__":
    main()
