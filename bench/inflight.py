"""In-flight benchmark: one worker process holding many calls open, next to its ceilings, in one run.

  (a) service:     N chat jobs through one RouterWorker (WORKER_CONCURRENCY=C) against a simulator
                   answering after L seconds: Producer -> Redis -> worker -> simulator -> result
  (b) raw client:  N AIsaClient.chat calls, C at a time, no queue, the same simulator
  ideal:           C / L jobs/s (every slot always busy, zero overhead)

Printed: jobs/s, the ideal, the raw client, the worker process's peak RSS, the ratios (goals:
service >= 0.9 x ideal and >= 0.95 x the raw client, RSS <= 300 MB), and what the service sent
to Redis per job (commands and round trips, counted client side in a second run of N jobs, since
counting slows the client; bytes in and out, commands run inside scripts included, and CPU,
counted by Redis; the memory a finished job keeps, its result and call log, until RESULT_TTL_S).
The worker runs in this process (burst mode), the simulator in its own; the service runs first,
so the peak RSS is the worker's (plus the producer's few MB), not the raw client's; it is read
before the counted run, whose counting is not the worker's code.

    python -m bench.inflight [--jobs 4000] [--concurrency 1000] [--latency 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from bench.dispatch import bench_settings as dispatch_settings
from bench.dispatch import drain_jobs, jobs, raw_client, start_sim
from harness.command_count import RedisTraffic
from harness.redis_server import PrivateRedis
from producers.api import Producer
from worker.contract.settings import Settings
from worker.process.service import create_worker


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def service(settings: Settings, n: int, count: bool = True) -> dict[str, Any]:
    """Drain N queued chat jobs with one worker: its rate, CPU and what Redis counted for them;
    then, if `count`, what it sent to Redis for N more (counted client side in a run of its own:
    counting replaces redis-py's `pack_command`, which the timed run must not pay)."""
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        await producer.redis.flushdb()
        memory_before = (await producer.redis.info("memory"))["used_memory"]
        ids = await producer.enqueue_many(jobs(n))
        await producer.redis.config_resetstat()
        cpu_before = _redis_cpu(await producer.redis.info("cpu"))
        worker = create_worker(settings, burst=True, handle_signals=False)
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            await worker.main()
        finally:
            await worker.close()
        elapsed, worker_cpu = time.perf_counter() - started, time.process_time() - cpu_started
        stats = await producer.redis.info("stats")
        cpu = _redis_cpu(await producer.redis.info("cpu")) - cpu_before
        kept = (await producer.redis.info("memory"))["used_memory"] - memory_before
        done = [await producer.result(i) for i in ids[:: max(n // 50, 1)]]
    assert all(r is not None and r.status == "succeeded" for r in done), "in-flight benchmark jobs failed"
    rss = peak_rss_mb()  # the timed run's: the counted one's counting is not the worker's code
    traffic = RedisTraffic()
    if count:
        await drain_jobs(settings, n, traffic)
    return {
        "rss": rss,
        "rate": n / elapsed,
        "cpu_ms": worker_cpu * 1000 / n,
        "commands": traffic.commands / n,
        "round_trips": traffic.round_trips / n,
        "by_name": {k: v / n for k, v in traffic.by_name.most_common()},
        "bytes_in": stats["total_net_input_bytes"] / n,
        "bytes_out": stats["total_net_output_bytes"] / n,
        "redis_commands": stats["total_commands_processed"] / n,
        "redis_cpu_us": cpu * 1e6 / n,
        "kept_bytes": kept / n,
    }


def _redis_cpu(info: dict[str, Any]) -> float:
    """Redis's CPU seconds so far (user + system, all its threads)."""
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(n: int, concurrency: int, latency_s: float, service_only: bool = False) -> None:
    sim, base_url = start_sim(latency_ms=latency_s * 1000)
    try:
        with PrivateRedis() as redis:
            settings = dispatch_settings(base_url, redis.url, worker_concurrency=concurrency)
            ours = await service(settings, n, count=not service_only)
            raw_rate, raw_cpu = (float("nan"), float("nan"))
            if not service_only:
                raw_rate, raw_cpu = await raw_client(settings, n, concurrency)
    finally:
        sim.stop()
    ideal = min(concurrency, n) / latency_s
    rate = ours["rate"]
    print(f"jobs={n} concurrency={concurrency} latency={latency_s:g}s cores={os.cpu_count()}")
    print(f"(a) llm-router service  {rate:8.0f} jobs/s")
    print(f"    ideal C/L           {ideal:8.0f} jobs/s")
    print(f"(b) raw AIsa client     {raw_rate:8.0f} req/s")
    print(f"worker CPU a job        {ours['cpu_ms']:8.3f} ms     (1000 / this: the jobs/s one core could do)")
    print(f"raw client CPU a call   {raw_cpu * 1000:8.3f} ms")
    print(f"peak RSS (worker)       {ours['rss']:8.0f} MB      (goal <= 300)")
    print(f"service / ideal       = {rate / ideal:.2f}   (goal >= 0.90)")
    print(f"service / raw client  = {rate / raw_rate:.2f}   (goal >= 0.95, issue 21)")
    print(
        f"Redis per job: {ours['commands']:.2f} commands, {ours['round_trips']:.2f} round trips, "
        f"{ours['bytes_in']:.0f} B in, {ours['bytes_out']:.0f} B out"
    )
    print(
        f"Redis inside: {ours['redis_commands']:.1f} commands a job (scripts' included), "
        f"{ours['redis_cpu_us']:.0f} us of Redis CPU a job, {ours['kept_bytes']:.0f} B kept a job "
        "(result, call log: until RESULT_TTL_S)"
    )
    print("  " + ", ".join(f"{name} {per:.2f}" for name, per in ours["by_name"].items() if per >= 0.01))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=2.0, help="simulator latency, seconds")
    parser.add_argument(
        "--service-only", action="store_true", help="skip the raw client and the counted run (to profile the service)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.concurrency, args.latency, args.service_only))


if __name__ == "__main__":
    main()
