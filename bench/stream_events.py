"""Live-event benchmark: what publishing a streaming job's deltas (worker.outputs.events) costs on the
job path, in one run. N streamed chat jobs of a long answer (one chunk per word) through the
whole service (Producer -> Redis -> RouterWorker -> simulator -> result store), three ways:

  (a) no events      STREAM_EVENTS_TTL_S=0: the worker publishes nothing
  (b) coalesced      the defaults: deltas merged, published at most every STREAM_EVENTS_FLUSH_MS
  (b') at 20 ms      the same, published at most every 20 ms
  (c) every chunk    STREAM_EVENTS_FLUSH_MS=0: one XADD round trip per chunk

The simulator runs in its own process with zero latency (chunks arrive as fast as the
network carries them: the worst case for the publisher, whose cost is per chunk and per
flush), Redis is a private server, the worker runs in this process (burst mode). Each way
runs `--rounds` times, interleaved; the round with the least CPU is kept. The measure is this
process's CPU time per job (worker, client and publisher; the simulator and Redis are other
processes), which other load on the machine moves far less than the wall-clock rate (also
shown). Ratios are what matter.

    python -m bench.stream_events [--jobs 300] [--words 200] [--concurrency 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from bench.dispatch import bench_settings, drain, start_sim
from harness.redis_server import PrivateRedis
from producers.api import Producer
from worker.contract.keys import events_key
from worker.contract.models import ChatJob
from worker.contract.settings import Settings

WAYS: dict[str, dict[str, Any]] = {
    "(a) no events": {"stream_events_ttl_s": 0},
    "(b) coalesced": {},
    "(b') at 20 ms": {"stream_events_flush_ms": 20},
    "(c) every chunk": {"stream_events_flush_ms": 0},
}


def jobs(n: int, words: int) -> list[ChatJob]:
    prompt = " ".join(f"w{i}" for i in range(words))
    return [
        ChatJob(model="gpt-4o-mini", messages=[{"role": "user", "content": f"{i} {prompt}"}], stream=True)
        for i in range(n)
    ]


async def one_way(settings: Settings, n: int, words: int) -> tuple[float, float, float]:
    """(jobs/s, this process's CPU ms per job, stream entries per job)."""
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        await producer.redis.flushdb()
        ids = await producer.enqueue_many(jobs(n, words))
        cpu = time.process_time()
        rate = n / await drain(settings)
        cpu_ms = (time.process_time() - cpu) * 1000 / n
        done = [await producer.result(i) for i in ids[:: max(n // 20, 1)]]
        assert all(r is not None and r.status == "succeeded" for r in done), "benchmark jobs failed"
        entries = sum([await producer.redis.xlen(events_key(i)) for i in ids])
    return rate, cpu_ms, entries / n


async def run(n: int, words: int, concurrency: int, rounds: int) -> None:
    sim, base_url = start_sim()
    best: dict[str, tuple[float, float, float]] = {}
    try:
        with PrivateRedis() as redis:
            for _ in range(rounds):
                for way, overrides in WAYS.items():
                    settings = bench_settings(
                        base_url, redis.url, worker_concurrency=concurrency, poll_delay_s=0.01, **overrides
                    )
                    measured = await one_way(settings, n, words)
                    if way not in best or measured[1] < best[way][1]:
                        best[way] = measured
    finally:
        sim.stop()
    print(f"jobs={n} words={words} (chunks per job: {words + 8}) concurrency={concurrency} cores={os.cpu_count()}")
    rate_a, cpu_a, _ = best["(a) no events"]
    for way, (rate, cpu, entries) in best.items():
        print(
            f"{way:16} {cpu:6.2f} ms CPU/job ({cpu / cpu_a:4.2f} x (a))"
            f"  {rate:6.0f} jobs/s ({rate / rate_a:4.2f} x (a))"
            f"  {entries:6.1f} stream entries per job"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.words, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
