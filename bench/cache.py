"""Cache benchmark: what the response cache's lookup costs on the job path, and what a hit
saves, in one run.

  (a) off:   N distinct chat jobs at temperature 0, CACHE_MODE=off (no lookup at all)
  (b) miss:  N other distinct jobs, CACHE_MODE=deterministic: every job looks up, misses,
             takes the single-flight lock, calls, stores its answer and drops the lock
  (c) hit:   the jobs of (b) again: every job is answered from the cache, no call

Each is run `--rounds` times, (a) first in one round and last in the next, and the best
rate of each is kept (the machine is noisy; ratios are what matter), with the median CPU time
per job of the worker process and redis-server (steadier than wall time on a shared machine). The simulator runs in
its own process with zero latency, so the cache's Redis work is as large a share of a job as
it can be; Redis is a private server, the worker runs in this process (burst mode).

    python -m bench.cache [--jobs 2000] [--concurrency 50] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from harness.processes import answers
from harness.redis_server import PrivateRedis
from producers.api import Producer
from worker.contract.models import ChatJob
from worker.contract.settings import Settings

from .dispatch import bench_settings, drain, start_sim

Mode = Literal["off", "deterministic", "all"]


def jobs(n: int, tag: str) -> list[ChatJob]:
    return [
        ChatJob(model="gpt-4o-mini", messages=[{"role": "user", "content": f"{tag} prompt {i}"}], temperature=0)
        for i in range(n)
    ]


@dataclass
class Run:
    rate: float  # jobs/s
    cpu_ms: float  # CPU per job: the worker process and redis-server (the simulator's left out)
    cached: int


async def redis_cpu_s(producer: Producer) -> float:
    info = await producer.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(settings: Settings, batch: list[ChatJob], mode: Mode) -> Run:
    """`batch` through the service with CACHE_MODE=`mode`."""
    # a queue per mode: each mode's workers are a fleet of their own (worker.process.fleet would warn
    # that CACHE_MODE differs from the previous round's workers, still live on a shared queue)
    run = settings.model_copy(update={"cache_mode": mode, "queue_name": f"bench-cache-{mode}"})
    async with Producer(run.redis_url, queue_name=run.queue_name) as producer:
        ids = await producer.enqueue_many(batch)
        cpu, redis_cpu, started = time.process_time(), await redis_cpu_s(producer), time.perf_counter()
        await drain(run)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu + await redis_cpu_s(producer) - redis_cpu
        results = [await producer.result(i) for i in ids]
    assert all(r is not None and r.status == "succeeded" for r in results), "cache benchmark jobs failed"
    cached = sum(1 for r in results if r is not None and r.cached)
    return Run(len(batch) / elapsed, cpu * 1000 / len(batch), cached)


async def run(n: int, concurrency: int, rounds: int) -> None:
    sim, base_url = start_sim()
    runs: dict[str, list[Run]] = {"off": [], "miss": [], "hit": []}
    try:
        with PrivateRedis() as redis:
            settings = bench_settings(base_url, redis.url, worker_concurrency=concurrency, poll_delay_s=0.01)
            await measure(settings, jobs(200, "warm"), "off")  # connections, scripts, imports
            for round_ in range(rounds):
                tag = uuid.uuid4().hex[:8]  # new prompts each round: (a) and (b) never hit
                if round_ % 2 == 0:  # alternate which goes first: neither always gets the quieter moment
                    runs["off"].append(await measure(settings, jobs(n, tag + "-off"), "off"))
                runs["miss"].append(await measure(settings, jobs(n, tag), "deterministic"))
                runs["hit"].append(await measure(settings, jobs(n, tag), "deterministic"))
                if round_ % 2 == 1:
                    runs["off"].append(await measure(settings, jobs(n, tag + "-off"), "off"))
        assert answers(base_url.removesuffix("/v1") + "/_sim/stats")
    finally:
        sim.stop()
    assert all(r.cached == 0 for r in runs["off"] + runs["miss"]) and all(r.cached == n for r in runs["hit"])
    rate = {k: max(r.rate for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r.cpu_ms for r in v) for k, v in runs.items()}
    print(f"jobs={n} concurrency={concurrency} rounds={rounds} cores={os.cpu_count()} (best rate, median CPU)")
    for key, label in (
        ("off", "(a) cache off"),
        ("miss", "(b) cache on, every miss"),
        ("hit", "(c) cache on, every hit"),
    ):
        print(f"{label:26} {rate[key]:6.0f} jobs/s   {cpu[key]:.2f} ms CPU/job (worker + redis)")
    print(f"miss / off = {rate['miss'] / rate['off']:.2f} jobs/s, {cpu['miss'] / cpu['off']:.2f} CPU/job")
    print(f"hit / off  = {rate['hit'] / rate['off']:.2f} jobs/s, {cpu['hit'] / cpu['off']:.2f} CPU/job")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
