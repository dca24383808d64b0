"""Fair share benchmark (issue 20, docs/fair-share.md), every figure in one run:

  (1) contention: source A enqueues `--flood` interactive jobs at once, source B sends 2 jobs a
      second, one shared limit of R requests a minute that A alone saturates, `--workers`
      `llm-router worker` processes. B's enqueue-to-call p50/p99 (target p99 <= 1 s + 60/R) and
      A's throughput while both ran over R - 120 a minute (target >= 0.95); with FAIR_SHARE on,
      then off (today's one queue, a smaller flood).
  (2) weights 3:1, both saturating: the calls each source started over `--share-window` s while
      both had jobs waiting (target: within 5 % of 3:1).
  (3) one source alone, no rate limit: throughput with FAIR_SHARE on over off (target >= 0.98),
      and Redis commands per job (INFO total_commands_processed) on and off (target: +1 at most),
      the median of `--alone-rounds` runs of each, in turn.
  (4) weights 3:1, a batch from each source in the bulk lane (B's first): the lines each started
      over `--share-window` s while both waited (target: within 5 % of 3:1).

Against the simulator (enforcing R in a `--window` s sliding window, 50 ms a call); one private
Redis; the workers restarted between scenarios with their settings.

    python -m bench.fairshare [--flood 2400] [--rpm 1200] [--workers 4] [--alone 5000] [--only 1,3]
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
from worker.batches.record import line_job_id
from worker.contract.keys import result_key
from worker.contract.models import ChatJob, JobResult
from worker.contract.settings import RateLimit, Settings

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


def batch_lines(source: str, n: int) -> list[dict]:
    return [
        {
            "custom_id": f"{source}{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"{source} line {i}"}]},
        }
        for i in range(n)
    ]


async def bulk_shares(
    fleet: Fleet, settings: Settings, sim_url: str, each: int, rpm: float, window: float, span: float
) -> str:
    """(4): a batch from B (weight 1), then one from A (weight 3), in the bulk lane; lines each
    started over `span` s while both waited."""
    await fleet.start(settings)
    async with (
        Producer(source="a", settings=settings) as a,
        Producer(source="b", settings=settings) as b,
    ):
        await fresh(a, sim_url, rpm, window)
        b_batch = await b.batches.submit(batch_lines("b", each))
        a_batch = await a.batches.submit(batch_lines("a", each))
        t0 = time.time()
        await asyncio.sleep(5 + span)
        fleet.stop()
        got = {}
        for name, batch in (("a", a_batch), ("b", b_batch)):
            ids = [line_job_id(batch.id, n) for n in range(1, each + 1)]
            got[name] = await results(a, ids)
    calls = {
        name: sum(
            1 for r in rs.values() if r.attempts and r.attempts[0].at and t0 + 5 <= r.attempts[0].at < t0 + 5 + span
        )
        for name, rs in got.items()
    }
    ratio = calls["a"] / max(calls["b"], 1)
    return (
        f"lines started in {span:g}s: A {calls['a']}, B {calls['b']}: {ratio:5.3f}:1"
        f" (target 3:1 within 5 %: {abs(ratio / 3 - 1) <= 0.05})"
    )


def cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) the processes have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


async def alone(fleet: Fleet, settings: Settings, sim_url: str, n: int, redis_pid: int) -> tuple[float, float, float]:
    """(3): one source's `n` jobs, no rate limit: (jobs/s, the steady rate,
    Redis commands per job from before the enqueue to the last job released, producer's included,
    CPU ms per job of the workers and Redis meanwhile)."""
    await fleet.start(settings)
    pids = [redis_pid, *(w.proc.pid for w in fleet.procs)]
    async with Producer(source="a", settings=settings) as p:
        await fresh(p, sim_url, None, 1)
        before, cpu_before = int((await p.redis.info("stats"))["total_commands_processed"]), cpu_s(pids)
        ids = await enqueue(p, jobs("a", n))

        async def all_released() -> bool:  # (a few commands a poll: nothing like a job's)
            return await p.queued() == 0

        await wait_until_async(all_released, 300, "the jobs", 0.1)
        after, cpu_after = int((await p.redis.info("stats"))["total_commands_processed"]), cpu_s(pids)
        got = await results(p, ids)
    if len(got) != n or any(r.status != "succeeded" for r in got.values()):
        raise RuntimeError(f"{n - len(got)} jobs without a result, or failed")
    # the steady rate: jobs that ended between the 5th and the 95th percentile of the ends, over
    # that time (a run's start and end, workers filling their slots and the last few, aside)
    ends = sorted(r.finished_at.timestamp() for r in got.values() if r.finished_at)
    lo, hi = ends[n // 20], ends[n - 1 - n // 20]
    return (n - 1 - 2 * (n // 20)) / (hi - lo), (after - before) / n, (cpu_after - cpu_before) * 1000 / n


def say(line: str) -> None:
    print(f"{line}  [load {os.getloadavg()[0]:.1f}]", flush=True)


async def run(args: argparse.Namespace) -> None:
    only = {int(x) for x in args.only.split(",")}
    sim, base_url = start_sim()
    limited = {MODEL: RateLimit(rpm=args.rpm)}
    print(
        f"R={args.rpm:g}/min (simulator: {round(args.rpm * args.window / 60)} per {args.window:g}s window,"
        f" {LATENCY_MS} ms a call) workers={args.workers} cores={os.cpu_count()}",
        flush=True,
    )
    try:
        with PrivateRedis() as redis, tempfile.TemporaryDirectory() as logs:
            fleet = Fleet(Path(logs), args.workers)
            base = bench_settings(base_url, redis.url, rate_limits=limited, fair_share=True)
            weighted = base.model_copy(update={"source_weights": {"a": 3, "b": 1}})
            try:
                if 1 in only:
                    on = await contention(fleet, base, base_url, args.flood, args.rpm, args.window)
                    say(f"(1) contention, FAIR_SHARE on,  A floods {args.flood}:  {on}")
                    off_settings = base.model_copy(update={"fair_share": False})
                    off = await contention(fleet, off_settings, base_url, args.flood_off, args.rpm, args.window)
                    say(f"(1) contention, FAIR_SHARE off, A floods {args.flood_off}:  {off}")
                if 2 in only:
                    share = await shares(
                        fleet, weighted, base_url, args.share_each, args.rpm, args.window, args.share_window
                    )
                    say(f"(2) weights 3:1, {args.share_each} jobs each: {share}")
                if 3 in only:
                    assert redis.proc is not None
                    say(await alone_rounds(fleet, bench_settings(base_url, redis.url), base_url, args, redis.proc.pid))
                if 4 in only:
                    bulk = await bulk_shares(
                        fleet, weighted, base_url, args.share_each, args.rpm, args.window, args.share_window
                    )
                    say(f"(4) weights 3:1, a batch of {args.share_each} lines each in the bulk lane: {bulk}")
            finally:
                fleet.stop()
    finally:
        sim.stop()


async def alone_rounds(fleet: Fleet, free: Settings, sim_url: str, args: argparse.Namespace, redis_pid: int) -> str:
    """(3), on and off in turn (the machine's load moves): the median of each."""
    runs: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for _ in range(args.alone_rounds):
        for on in (True, False):
            setting = free.model_copy(update={"fair_share": on})
            runs[on].append(await alone(fleet, setting, sim_url, args.alone, redis_pid))
    on_rate, off_rate = (statistics.median(r for r, _, _ in runs[on]) for on in (True, False))
    on_cmds, off_cmds = (statistics.median(c for _, c, _ in runs[on]) for on in (True, False))
    on_cpu, off_cpu = (statistics.median(c for _, _, c in runs[on]) for on in (True, False))
    each = ", ".join(f"{a[0]:.0f}/{b[0]:.0f}" for a, b in zip(runs[True], runs[False], strict=True))
    return (
        f"(3) one source alone, {args.alone} jobs, no limit, median of {args.alone_rounds} rounds each"
        f" (on/off: {each}): on {on_rate:6.1f} jobs/s, off {off_rate:6.1f} jobs/s, ratio {on_rate / off_rate:5.3f}"
        f" (target >= 0.98); CPU (workers + Redis) a job on {on_cpu:5.2f} ms, off {off_cpu:5.2f} ms"
        f" (off/on {off_cpu / on_cpu:5.3f}); Redis commands/job on {on_cmds:5.2f}, off {off_cmds:5.2f}"
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
    parser.add_argument("--alone", type=int, default=5000, help="jobs of the one source in (3)")
    parser.add_argument("--alone-rounds", type=int, default=3, help="runs of (3) on and off, in turn")
    parser.add_argument("--only", default="1,2,3,4", help="the scenarios to run, e.g. 1,3")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
