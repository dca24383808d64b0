"""Priority benchmark: interactive jobs next to a batch that saturates a shared rate limit, in one run:

  (a) lane:   N batch lines (`bulk=True`, the bulk lane) and one interactive job a second
  (b) plain:  the same load without the lane (the lines are plain jobs, in the queue), shorter

Both against a simulator enforcing R requests per minute (in a `--window` s sliding window,
50 ms a call), through `--workers` `llm-router worker` processes sharing RATE_LIMITS. For the
interactive jobs (`producer.chat`, no fallbacks): enqueue-to-call p50/p99, split into the
queue wait (`started_at - enqueued_at`) and the first attempt's wait for its rate-limit slot
(`attempts[0].waited_s`); target p99 <= 1 s + one slot (60/R s). For the batch: its share of
what the interactive jobs leave of R (lines finished per second while both ran, over
R/60 - 1/s); target >= 0.95. And the 429s the simulator sent.

    python -m bench.priority [--lines 20000] [--rpm 12000] [--window 10] [--workers 4] [--plain-lines 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.dispatch import bench_settings, start_sim
from bench.ratelimit import wait_ready
from harness.processes import WorkerProcess
from harness.redis_server import PrivateRedis
from harness.sim_admin import sim_admin
from harness.wait import wait_until_async
from producers.api import Producer
from worker.contract.keys import result_key
from worker.contract.models import ChatJob, JobResult
from worker.contract.settings import RateLimit, Settings

MODEL = "gpt-4o-mini"
CHUNK = 1000  # lines per enqueue_many call
LATENCY_MS = 50
INTERACTIVE_EVERY_S = 1.0


async def submit_batch(producer: Producer, lines: list[ChatJob]) -> list[str]:
    """The batch, in chunks of one round trip each (where `Producer.submit_batch` will go)."""
    ids: list[str] = []
    for i in range(0, len(lines), CHUNK):
        ids += await producer.enqueue_many(lines[i : i + CHUNK])
    return ids


async def results(producer: Producer, ids: Iterable[str]) -> dict[str, JobResult]:
    """The stored results among `ids`, in one round trip."""
    ids = list(ids)
    async with producer.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.get(result_key(job_id))
        raw = await pipe.execute()
    return {i: JobResult.model_validate_json(r) for i, r in zip(ids, raw, strict=True) if r}


@dataclass
class Load:
    lines: list[JobResult]
    interactive: list[JobResult]
    stats: dict


async def load(settings: Settings, sim_url: str, window: float, n: int, bulk: bool) -> Load:
    """N lines and one interactive job a second until the last line is done."""
    rpm = settings.rate_limits[MODEL].rpm
    sim_admin(sim_url, "/_sim/reset", {})
    sim_admin(
        sim_url,
        "/_sim/config",
        {"model": MODEL, "rpm": round(rpm * window / 60), "rate_window_s": window, "latency_ms": LATENCY_MS},
    )
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        await producer.redis.flushdb()
        batch = [
            ChatJob(model=MODEL, messages=[{"role": "user", "content": f"line {i}"}], fallbacks=[], bulk=bulk)
            for i in range(n)
        ]
        pending = set(await submit_batch(producer, batch))
        done: dict[str, JobResult] = {}
        interactive: list[str] = []

        async def one_a_second() -> None:
            start = time.monotonic()
            while True:
                interactive.append(await producer.chat(MODEL, f"interactive {len(interactive)}", fallbacks=[]))
                await asyncio.sleep(start + len(interactive) * INTERACTIVE_EVERY_S - time.monotonic())

        async def batch_done() -> bool:  # reads results only once the queues are nearly empty
            if await producer.queued() > 1000:
                return False
            done.update(await results(producer, pending))
            pending.difference_update(done)
            return not pending

        ticking = asyncio.create_task(one_a_second())
        try:
            limit = max(60.0, 3 * n / (rpm / 60))
            await wait_until_async(batch_done, limit, lambda: f"the batch ({len(pending)} of {n} pending)", 0.5)
        finally:
            ticking.cancel()
        firsts = [await producer.wait(i, timeout=30) for i in interactive]
        stats = sim_admin(sim_url, "/_sim/stats")
    failed = [r for r in [*done.values(), *firsts] if r.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs failed, e.g. {failed[0].error}")
    return Load(list(done.values()), firsts, stats)


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def report(name: str, run: Load, rpm: float) -> None:
    """The interactive jobs' waits (p50, p99, max) and the batch's share of R, by their targets; 429s."""
    firsts = run.interactive
    enqueued = [r.enqueued_at.timestamp() if r.enqueued_at else 0.0 for r in firsts]
    started = [r.started_at.timestamp() if r.started_at else 0.0 for r in firsts]
    queue = [s - e for s, e in zip(started, enqueued, strict=True)]
    slot = [r.attempts[0].waited_s for r in firsts]
    total = [(r.attempts[0].at or 0.0) - e for r, e in zip(firsts, enqueued, strict=True)]
    # the window where both ran: from the first interactive enqueue to the last line's finish
    finished = [r.finished_at.timestamp() if r.finished_at else 0.0 for r in run.lines]
    start, end = min(enqueued), max(finished)
    share = sum(f >= start for f in finished) / (end - start) / (rpm / 60 - 1 / INTERACTIVE_EVERY_S)
    calls = sum(run.stats["calls"].values())
    print(f"{name}: {len(run.lines)} lines, {len(firsts)} interactive jobs")
    for what, values, target in (
        ("enqueue-to-call", total, f"   target p99 <= {1 + 60 / rpm:.3f}s (1 s + 60/R)"),
        ("  queue wait", queue, ""),
        ("  slot wait", slot, ""),
    ):
        print(f"  {what:<16} p50 {pct(values, 50):6.3f}s  p99 {pct(values, 99):6.3f}s  max {max(values):6.3f}s{target}")
    print(f"  batch share of (R - interactive) {share:5.3f}   target >= 0.95")
    print(f"  429s / calls     {run.stats['rate_limited']}/{calls}")


async def run(n: int, plain_n: int, rpm: float, window: float, workers: int) -> None:
    sim, base_url = start_sim()
    try:
        with PrivateRedis() as redis, tempfile.TemporaryDirectory() as logs:
            settings = bench_settings(base_url, redis.url, rate_limits={MODEL: RateLimit(rpm=rpm)})
            procs = [WorkerProcess(settings, Path(logs) / f"worker{i}.log") for i in range(workers)]
            try:
                await wait_ready(procs)
                lane = await load(settings, base_url, window, n, bulk=True)
                plain = await load(settings, base_url, window, plain_n, bulk=False)
            finally:
                for p in procs:
                    p.stop()
    finally:
        sim.stop()
    print(
        f"lines={n} (plain: {plain_n}) R={rpm:g}/min (simulator: {round(rpm * window / 60)} per {window:g}s window, "
        f"{LATENCY_MS} ms a call) workers={workers} cores={os.cpu_count()}"
    )
    report("(a) bulk lane", lane, rpm)
    report("(b) no lane (plain queue)", plain, rpm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--plain-lines", type=int, default=2000, help="lines of the run without the lane")
    parser.add_argument("--rpm", type=float, default=12000)
    parser.add_argument("--window", type=float, default=10, help="the simulator's rate window in seconds")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.lines, args.plain_lines, args.rpm, args.window, args.workers))


if __name__ == "__main__":
    main()
