"""Fair share benchmark (issue 20, docs/fair-share.md), every figure in one run:

  (1) contention: source A enqueues `--flood` interactive jobs at once, source B sends 2 jobs a
      second, one shared limit of R requests a minute that A alone saturates, `--workers`
      `llm-router worker` processes. B's enqueue-to-call p50/p99 (target p99 <= 1 s + 60/R) and
      A's throughput while both ran over R - 120 a minute (target >= 0.95); with FAIR_SHARE on,
      then off (today's one queue, a smaller flood).
  (2) weights 3:1, both saturating: the calls each source started over `--share-window` s while
      both had jobs waiting (target: within 5 % of 3:1).
  (3) one source alone, no rate limit: throughput with FAIR_SHARE on over off (target >= 0.98),
      and Redis commands per job (INFO total_commands_processed) on and off (target: +1 at most).

Against the simulator (enforcing R in a `--window` s sliding window, 50 ms a call); one private
Redis; the workers restarted between scenarios with their settings.

    python -m bench.fairshare [--flood 2400] [--rpm 1200] [--workers 4] [--alone 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from bench.dispatch import bench_settings, start_sim
from bench.ratelimit import wait_ready
from harness.processes import WorkerProcess
from harness.redis_server import PrivateRedis
from harness.sim_admin import sim_admin
from harness.wait import wait_until_async
from producers.api import Producer
from worker.keys import result_key
from worker.models import ChatJob, JobResult
from worker.settings import RateLimit, Settings

MODEL = "gpt-4o-mini"
LATENCY_MS = 50
B_EVERY_S = 0.5  # two jobs a second
CHUNK = 1000


def jobs(source: str, n: int, start: int = 0) -> list[ChatJob]:
    return [
        ChatJob(model=MODEL, messages=[{"role": "user", "content": f"{source} {i}"}], fallbacks=[], source=source)
        for i in range(start, start + n)
    ]


async def enqueue(producer: Producer, batch: list[ChatJob]) -> list[str]:
    ids: list[str] = []
    for i in range(0, len(batch), CHUNK):
        ids += await producer.enqueue_many(batch[i : i + CHUNK])
    return ids


async def results(producer: Producer, ids: Iterable[str]) -> dict[str, JobResult]:
    ids = list(ids)
    async with producer.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.get(result_key(job_id))
        raw = await pipe.execute()
    return {i: JobResult.model_validate_json(r) for i, r in zip(ids, raw, strict=True) if r}


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


class Fleet:
    """`n` worker processes on `settings`, restarted with new settings per scenario."""

    def __init__(self, logs: Path, n: int) -> None:
        self.logs, self.n, self.runs = logs, n, 0
        self.procs: list[WorkerProcess] = []

    async def start(self, settings: Settings) -> None:
        self.stop()
        self.runs += 1
        self.procs = [WorkerProcess(settings, self.logs / f"w{self.runs}-{i}.log") for i in range(self.n)]
        await wait_ready(self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        self.procs = []


async def fresh(producer: Producer, sim_url: str, rpm: float | None, window: float) -> None:
    await producer.redis.flushdb()
    sim_admin(sim_url, "/_sim/reset", {})
    config: dict = {"model": MODEL, "latency_ms": LATENCY_MS}
    if rpm:  # (a reset leaves the simulator without a limit)
        config |= {"rpm": round(rpm * window / 60), "rate_window_s": window}
    sim_admin(sim_url, "/_sim/config", config)


async def contention(fleet: Fleet, settings: Settings, sim_url: str, flood: int, rpm: float, window: float) -> str:
    """(1): A's flood and B's 2/s until A's last job is done."""
    await fleet.start(settings)
    async with (
        Producer(source="a", settings=settings) as a,
        Producer(source="b", settings=settings) as b,
    ):
        await fresh(a, sim_url, rpm, window)
        a_ids = set(await enqueue(a, jobs("a", flood)))
        b_ids: list[str] = []
        done: dict[str, JobResult] = {}

        async def two_a_second() -> None:
            start = time.monotonic()
            while True:
                b_ids.append(await b.enqueue(jobs("b", 1, len(b_ids))[0]))
                await asyncio.sleep(start + len(b_ids) * B_EVERY_S - time.monotonic())

        async def flood_done() -> bool:
            if await a.queued() > 200:
                return False
            done.update(await results(a, a_ids - set(done)))
            return len(done) == len(a_ids)

        ticking = asyncio.create_task(two_a_second())
        try:
            await wait_until_async(flood_done, max(120.0, 4 * flood / (rpm / 60)), "A's flood", 0.5)
        finally:
            ticking.cancel()
        firsts = [await b.wait(i, timeout=120) for i in b_ids]
        stats = sim_admin(sim_url, "/_sim/stats")
    bad = [r for r in [*done.values(), *firsts] if r.status != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs failed, e.g. {bad[0].error}")
    enq = [r.enqueued_at.timestamp() if r.enqueued_at else 0.0 for r in firsts]
    to_call = [(r.attempts[0].at or 0.0) - e for r, e in zip(firsts, enq, strict=True)]
    queue = [(r.started_at.timestamp() if r.started_at else 0.0) - e for r, e in zip(firsts, enq, strict=True)]
    slot = [r.attempts[0].waited_s for r in firsts]
    finished = [r.finished_at.timestamp() if r.finished_at else 0.0 for r in done.values()]
    start, end = min(enq), max(finished)
    if os.environ.get("FAIRSHARE_DUMP"):  # each B job: seconds after the first, enqueue-to-call, runs
        for e, t, r in sorted(zip(enq, to_call, firsts, strict=True)):
            print(f"  B {e - start:7.2f}s  {t:6.3f}s  runs {r.runs}", file=sys.stderr)
    a_rate = sum(f >= start for f in finished) / (end - start) * 60
    return (
        f"B enqueue-to-call p50 {pct(to_call, 50):6.3f}s p99 {pct(to_call, 99):6.3f}s max {max(to_call):6.3f}s"
        f" (target p99 <= {1 + 60 / rpm:.3f}s; queue wait p99 {pct(queue, 99):6.3f}s, slot wait p99"
        f" {pct(slot, 99):6.3f}s, runs {max(r.runs for r in firsts)});"
        f" A {a_rate:7.0f}/min = {a_rate / (rpm - 120):5.3f} x (R - 120)"
        f" (target >= 0.95); {len(firsts)} B jobs; 429s {stats['rate_limited']}"
    )


async def shares(
    fleet: Fleet, settings: Settings, sim_url: str, each: int, rpm: float, window: float, span: float
) -> str:
    """(2): A (weight 3) and B (weight 1) both flood; calls started by each over `span` s."""
    await fleet.start(settings)
    async with Producer(settings=settings) as p:
        await fresh(p, sim_url, rpm, window)
        ids = await enqueue(p, [j for pair in zip(jobs("a", each), jobs("b", each), strict=True) for j in pair])
        t0 = time.time()
        await asyncio.sleep(5 + span)  # 5 s to fill every worker's slots, then the window
        fleet.stop()  # what ran is what the window saw; the rest is dropped with the Redis
        got = await results(p, ids)
    window_calls = {"a": 0, "b": 0}
    for r in got.values():
        at = r.attempts[0].at if r.attempts else None
        if at is not None and t0 + 5 <= at < t0 + 5 + span:
            window_calls["a" if r.job_id in ids[0::2] else "b"] += 1
    ratio = window_calls["a"] / max(window_calls["b"], 1)
    return (
        f"calls started in {span:g}s: A {window_calls['a']}, B {window_calls['b']}: {ratio:5.3f}:1"
        f" (target 3:1 within 5 %: {abs(ratio / 3 - 1) <= 0.05})"
    )


async def alone(fleet: Fleet, settings: Settings, sim_url: str, n: int) -> tuple[float, float]:
    """(3): one source's `n` jobs, no rate limit: (jobs/s, Redis commands per job)."""
    await fleet.start(settings)
    async with Producer(source="a", settings=settings) as p:
        await fresh(p, sim_url, None, 1)
        before = int((await p.redis.info("stats"))["total_commands_processed"])
        started = time.perf_counter()
        ids = set(await enqueue(p, jobs("a", n)))
        seen: set[str] = set()

        async def all_done() -> bool:
            if await p.queued() > 100:
                return False
            seen.update(await results(p, ids - seen))
            return len(seen) == n

        await wait_until_async(all_done, 300, "the jobs", 0.2)
        elapsed = time.perf_counter() - started
        after = int((await p.redis.info("stats"))["total_commands_processed"])
    return n / elapsed, (after - before) / n


async def run(args: argparse.Namespace) -> None:
    sim, base_url = start_sim()
    limited = {MODEL: RateLimit(rpm=args.rpm)}
    try:
        with PrivateRedis() as redis, tempfile.TemporaryDirectory() as logs:
            fleet = Fleet(Path(logs), args.workers)
            base = bench_settings(base_url, redis.url, rate_limits=limited, fair_share=True)
            try:
                on = await contention(fleet, base, base_url, args.flood, args.rpm, args.window)
                off = await contention(
                    fleet,
                    base.model_copy(update={"fair_share": False}),
                    base_url,
                    args.flood_off,
                    args.rpm,
                    args.window,
                )
                weighted = base.model_copy(update={"source_weights": {"a": 3, "b": 1}})
                share = await shares(
                    fleet, weighted, base_url, args.share_each, args.rpm, args.window, args.share_window
                )
                free = bench_settings(base_url, redis.url, fair_share=True)
                on_rate, on_cmds = await alone(fleet, free, base_url, args.alone)
                off_rate, off_cmds = await alone(
                    fleet, free.model_copy(update={"fair_share": False}), base_url, args.alone
                )
            finally:
                fleet.stop()
    finally:
        sim.stop()
    print(
        f"R={args.rpm:g}/min (simulator: {round(args.rpm * args.window / 60)} per {args.window:g}s window,"
        f" {LATENCY_MS} ms a call) workers={args.workers} cores={os.cpu_count()} load {os.getloadavg()[0]:.1f}"
    )
    print(f"(1) contention, FAIR_SHARE on,  A floods {args.flood}:  {on}")
    print(f"(1) contention, FAIR_SHARE off, A floods {args.flood_off}:  {off}")
    print(f"(2) weights 3:1, {args.share_each} jobs each: {share}")
    print(
        f"(3) one source alone, {args.alone} jobs, no limit: on {on_rate:6.1f} jobs/s, off {off_rate:6.1f} jobs/s,"
        f" ratio {on_rate / off_rate:5.3f} (target >= 0.98); Redis commands/job on {on_cmds:5.2f}, off {off_cmds:5.2f}"
        f" (+{on_cmds - off_cmds:4.2f}, target <= +1)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=2400, help="A's jobs at once, FAIR_SHARE on")
    parser.add_argument("--flood-off", type=int, default=1200, help="A's jobs at once, FAIR_SHARE off")
    parser.add_argument("--rpm", type=float, default=1200, help="the shared limit R")
    parser.add_argument("--window", type=float, default=10, help="the simulator's rate window in seconds")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--share-each", type=int, default=1500, help="jobs each source floods in (2)")
    parser.add_argument("--share-window", type=float, default=30, help="seconds (2) counts over")
    parser.add_argument("--alone", type=int, default=3000, help="jobs of the one source in (3)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
