"""Cache benchmark: what the response cache's lookup costs on the job path, and what a hit
saves, in one run.

  (a) off:   N distinct chat jobs at temperature 0, CACHE_MODE=off (no lookup at all)
  (b) miss:  N other distinct jobs, CACHE_MODE=deterministic: every job looks up, misses,
             takes the single-flight lock, calls, stores its answer and drops the lock
  (c) hit:   the jobs of (b) again: every job is answered from the cache, no call

Each is run `--rounds` times, (a) first in one round and last in the next, and the best
rate of each is kept (the machine is noisy; ratios are what matter). The simulator runs in
its own process with zero latency, so the cache's Redis work is as large a share of a job as
it can be; Redis is a private server, the worker runs in this process (burst mode).

    python -m bench.cache [--jobs 2000] [--concurrency 50] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Literal

from harness.processes import answers
from harness.redis_server import PrivateRedis
from producers.api import Producer
from worker.models import ChatJob
from worker.settings import Settings

from .dispatch import bench_settings, drain, start_sim

Mode = Literal["off", "deterministic", "all"]


def jobs(n: int, tag: str) -> list[ChatJob]:
    return [
        ChatJob(model="gpt-4o-mini", messages=[{"role": "user", "content": f"{tag} prompt {i}"}], temperature=0)
        for i in range(n)
    ]


async def rate(settings: Settings, batch: list[ChatJob], mode: Mode) -> tuple[float, int]:
    """(jobs/s, cached results) for `batch` through the service with CACHE_MODE=`mode`."""
    run = settings.model_copy(update={"cache_mode": mode})
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        ids = await producer.enqueue_many(batch)
        started = time.perf_counter()
        await drain(run)
        elapsed = time.perf_counter() - started
        results = [await producer.result(i) for i in ids]
    assert all(r is not None and r.status == "succeeded" for r in results), "cache benchmark jobs failed"
    return len(batch) / elapsed, sum(1 for r in results if r is not None and r.cached)


async def run(n: int, concurrency: int, rounds: int) -> None:
    sim, base_url = start_sim()
    best = {"off": 0.0, "miss": 0.0, "hit": 0.0}
    try:
        with PrivateRedis() as redis:
            settings = bench_settings(base_url, redis.url, worker_concurrency=concurrency, poll_delay_s=0.01)
            await rate(settings, jobs(200, "warm"), "off")  # connections, scripts, imports
            for round_ in range(rounds):
                tag = uuid.uuid4().hex[:8]  # new prompts each round: (a) and (b) never hit
                if round_ % 2 == 0:  # alternate which goes first: neither always gets the quieter moment
                    off_rate, off_cached = await rate(settings, jobs(n, tag + "-off"), "off")
                miss_rate, miss_cached = await rate(settings, jobs(n, tag), "deterministic")
                hit_rate, hit_cached = await rate(settings, jobs(n, tag), "deterministic")
                if round_ % 2 == 1:
                    off_rate, off_cached = await rate(settings, jobs(n, tag + "-off"), "off")
                assert off_cached == 0 and miss_cached == 0 and hit_cached == n, (off_cached, miss_cached, hit_cached)
                best = {
                    "off": max(best["off"], off_rate),
                    "miss": max(best["miss"], miss_rate),
                    "hit": max(best["hit"], hit_rate),
                }
        assert answers(base_url.removesuffix("/v1") + "/_sim/stats")
    finally:
        sim.stop()
    print(f"jobs={n} concurrency={concurrency} rounds={rounds} cores={os.cpu_count()}")
    print(f"(a) cache off             {best['off']:8.0f} jobs/s")
    print(f"(b) cache on, every miss  {best['miss']:8.0f} jobs/s")
    print(f"(c) cache on, every hit   {best['hit']:8.0f} jobs/s")
    print(f"miss / off = {best['miss'] / best['off']:.2f}   (the lookup, lock and store on a miss)")
    print(f"hit / off  = {best['hit'] / best['off']:.2f}   (no call, no rate-limit booking)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
