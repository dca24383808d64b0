"""Dispatch benchmark: N chat jobs through the whole service, next to its two ceilings, in one run.

  (a) arq no-op:   N jobs of an empty function through arq's own Worker, our settings
  (a') no-op on llm-router's Worker (RouterWorker: batched claim, leases)
  (b) raw client:  N AIsaClient.chat calls, `concurrency` at a time, no queue
  (c) service:     N chat jobs: Producer -> Redis -> RouterWorker -> simulator -> result store

The simulator runs in its own process with zero latency, Redis is a private server, and
the worker runs in this process (burst mode). Ratios are what matter on a noisy machine: the
goal is (c) >= 0.9 x the serial bound 1/(1/a' + 1/b) by CPU time (issue 21; 0.8 by the wall
clock before), what one event loop can do when it must both run the queue and make the HTTP
call; (c)/(b) shows what the queue costs on top of HTTP.
It also prints what the service sent to Redis per job (commands and round trips, client side),
counted in a second run of N jobs after the timed one (counting slows the client down).

    python -m bench.dispatch [--jobs 2000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

from arq.worker import Worker, func

from harness.command_count import RedisTraffic
from harness.processes import LLMRouterProcess, answers
from harness.redis_server import PrivateRedis, free_port
from producers.api import Producer
from worker.calls.client import AIsaClient
from worker.contract.models import ChatJob
from worker.contract.settings import Settings
from worker.process.service import create_worker, worker_kwargs

KEY = "bench-key"


async def noop(ctx: dict, job: dict, size: int = 0) -> None:
    return None


def bench_settings(base_url: str, redis_url: str, **overrides: Any) -> Settings:
    """A benchmark's settings: the simulator's key and URL, a private Redis, no metrics port."""
    return Settings(
        aisa_api_key=KEY, aisa_base_url=base_url, redis_url=redis_url, metrics_port=0, _env_file=None, **overrides
    )


def start_sim(latency_ms: float = 0) -> tuple[LLMRouterProcess, str]:
    """`llm-router sim` on a free port, answering after `latency_ms`: (the process, its base URL)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = LLMRouterProcess(
        "sim",
        "--port",
        str(port),
        "--api-key",
        KEY,
        "--credits",
        "1000000",
        "--latency-ms",
        str(latency_ms),
        log_path=Path(os.devnull),
    )
    proc.wait_started(lambda: answers(url + "/_sim/stats"), 15, "simulator")
    return proc, url + "/v1"


def jobs(n: int) -> list[ChatJob]:
    return [ChatJob(model="gpt-4o-mini", messages=[{"role": "user", "content": f"prompt {i}"}]) for i in range(n)]


async def drain(settings: Settings, stock: bool = False, **overrides: object) -> float:
    """Run a worker in burst mode until the queue is empty: wall seconds."""
    wall, _ = await drain_timed(settings, stock, **overrides)
    return wall


async def drain_timed(settings: Settings, stock: bool = False, **overrides: object) -> tuple[float, float]:
    """Run a worker in burst mode until the queue is empty: (wall seconds, this process's CPU seconds)."""
    if stock:
        worker = Worker(**{**worker_kwargs(settings), "burst": True, "handle_signals": False, **overrides})
    else:
        worker = create_worker(settings, burst=True, handle_signals=False, **overrides)
    started, cpu = time.perf_counter(), time.process_time()
    try:
        await worker.main()
    finally:
        await worker.close()
    return time.perf_counter() - started, time.process_time() - cpu


async def arq_noop(settings: Settings, n: int, stock: bool = True) -> tuple[float, float]:
    """(jobs/s, CPU seconds a job)"""
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        await producer.redis.flushdb()
        # the same JSON job format and size as the real jobs, run by an empty function
        await producer.enqueue_many(jobs(n))
    wall, cpu = await drain_timed(
        settings,
        stock=stock,
        functions=[func(noop, name=kind, keep_result=0) for kind in ("chat", "vision", "compare")],
    )
    return n / wall, cpu / n


async def raw_client(settings: Settings, n: int, concurrency: int) -> tuple[float, float]:
    """(calls/s, CPU seconds a call)"""
    semaphore = asyncio.Semaphore(concurrency)
    async with AIsaClient(settings.aisa_base_url, KEY, max_connections=concurrency * 4) as client:

        async def one(i: int) -> None:
            async with semaphore:
                await client.chat({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"prompt {i}"}]})

        await one(-1)  # warm the connection pool
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - started), (time.process_time() - cpu) / n


async def service(settings: Settings, n: int) -> tuple[float, float, RedisTraffic]:
    """The service's rate and CPU seconds a job, then what it sent to Redis draining N more.

    Counting replaces redis-py's `pack_command` (harness.command_count), which also turns off the
    script Batcher's one-go packing and costs a Python call a command: a counted run is not the
    code a worker runs, so the timed run counts nothing and a second run of the same N is counted."""
    wall, cpu = await drain_jobs(settings, n)
    traffic = RedisTraffic()
    await drain_jobs(settings, n, traffic)
    return n / wall, cpu / n, traffic


async def drain_jobs(settings: Settings, n: int, traffic: RedisTraffic | None = None) -> tuple[float, float]:
    """N chat jobs queued, then drained by one worker (counted by `traffic` if given): (wall
    seconds, CPU seconds); fails unless they succeeded (a sample of 50 read back)."""
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        await producer.redis.flushdb()
        ids = await producer.enqueue_many(jobs(n))
        with traffic or contextlib.nullcontext():
            wall, cpu = await drain_timed(settings)
        done = [await producer.result(i) for i in ids[:: max(n // 50, 1)]]
    assert all(r is not None and r.status == "succeeded" for r in done), "service benchmark jobs failed"
    return wall, cpu


async def run(n: int, concurrency: int) -> None:
    sim, base_url = start_sim()
    try:
        with PrivateRedis() as redis:
            settings = bench_settings(base_url, redis.url, worker_concurrency=concurrency, poll_delay_s=0.01)
            noop_rate, _ = await arq_noop(settings, n)
            ours_noop, noop_cpu = await arq_noop(settings, n, stock=False)
            raw_rate, raw_cpu = await raw_client(settings, n, concurrency)
            service_rate, service_cpu, traffic = await service(settings, n)
    finally:
        sim.stop()
    # one event loop that must run the queue and make the HTTP call: the two costs add up
    bound = 1 / (1 / ours_noop + 1 / raw_rate)
    print(f"jobs={n} concurrency={concurrency} cores={os.cpu_count()}")
    print(f"(a) arq no-op jobs      {noop_rate:8.0f} jobs/s")
    print(f"(a') llm-router no-op   {ours_noop:8.0f} jobs/s")
    print(f"(b) raw AIsa client     {raw_rate:8.0f} req/s")
    print(f"(c) llm-router service  {service_rate:8.0f} jobs/s")
    print(f"serial bound 1/(1/a' + 1/b) = {bound:.0f} jobs/s")
    print(f"service / serial bound = {service_rate / bound:.2f}   (goal >= 0.80)")
    print(f"service / arq no-op   = {service_rate / noop_rate:.2f}")
    print(f"llm-router no-op / arq no-op = {ours_noop / noop_rate:.2f}   (the batched claim)")
    print(f"service / raw client  = {service_rate / raw_rate:.2f}")
    # the same bound in CPU time, which another process's load does not move: the no-op's and the
    # raw call's CPU a job, added, over the service's
    print(
        f"CPU a job: no-op {noop_cpu * 1000:.3f} ms, raw call {raw_cpu * 1000:.3f} ms, "
        f"service {service_cpu * 1000:.3f} ms; service / serial bound by CPU = "
        f"{(noop_cpu + raw_cpu) / service_cpu:.2f}   (goal >= 0.90, issue 21)"
    )
    print(
        f"Redis per job: {traffic.commands / n:.2f} commands, {traffic.round_trips / n:.2f} round trips  ("
        + ", ".join(f"{name} {count / n:.2f}" for name, count in traffic.by_name.most_common() if count >= n / 100)
        + ")"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.concurrency))


if __name__ == "__main__":
    main()
