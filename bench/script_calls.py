"""Script calls batched (worker.process.scripts.Batcher): this process's CPU a call, in batches of
`--batch` calls of the job path's size (a script of 4 keys and 11 arguments: 15 after EVALSHA),
against a private redis-server, the client as the worker's (arq's pool, the connections module's
retry): as a job calls (`run_scripts` awaited, one in five shielded as the call record is), through
the Batcher (a future a call, one flush a turn) and the sender alone. Two senders alternated in
one run, so the machine's load moves both alike:

  lean:      `scripts._send`: the batch packed as one write, replies read from the parser
  pipeline:  redis-py's pipeline (`raise_on_error=False`), the sender before it

Redis's own time is not this process's CPU.

Measured (2026-12-06 01:37-01:49 UTC, load 1.4-2.8, two cores shared with other work, medians of
3): through the Batcher 10.1 µs a call lean vs 19.0 pipeline, the sender alone 5.7 vs 12.8; in
batches of 8, 17.2 vs 28.3 alone (a batch's own cost, the pool's checkout and the round trip,
weighs more there).

    python -m bench.script_calls [--batch 250] [--rounds 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from arq.connections import create_pool
from redis.asyncio import Redis

from harness.redis_server import PrivateRedis
from worker.contract.connections import arq_settings
from worker.process import scripts
from worker.process.scripts import ScriptCall, preload, run_scripts

SCRIPT = "return #KEYS + #ARGV"
Sender = Callable[[Redis, Sequence[ScriptCall]], Awaitable[list[Any]]]


async def pipeline_send(redis: Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


async def measure(redis: Redis, script: Any, batch: int, rounds: int) -> tuple[float, float, float]:
    """CPU µs a call (as jobs call, through the Batcher, the sender alone) over `rounds` batches
    of `batch` calls each way."""
    keys = [f"llm:job:{i}" for i in range(4)]
    args: list[Any] = ["gpt-4o-mini", 1733450000123, 30000, "a" * 32, 1, 0, 12.5, "source", 7, "x" * 40, 0]
    calls = [(script, keys, args)]

    async def job() -> None:  # as a job's path: four calls awaited, one shielded (the call record)
        for _ in range(4):
            assert await run_scripts(redis, calls) == [15]
        assert await asyncio.shield(run_scripts(redis, calls)) == [15]

    cpu = time.process_time()
    for _ in range(max(rounds // 5, 1)):
        await asyncio.gather(*[job() for _ in range(batch)])
    as_jobs = (time.process_time() - cpu) / (max(rounds // 5, 1) * 5 * batch) * 1e6
    batcher: scripts.Batcher = getattr(redis, scripts.BATCHER_ATTR)
    cpu = time.process_time()
    for _ in range(rounds):  # a future a call, one flush a turn
        answers = await asyncio.gather(*[batcher.submit(calls, False) for _ in range(batch)])
        assert answers[-1] == [15], answers[-1]
    batched = (time.process_time() - cpu) / (rounds * batch) * 1e6
    flat = calls * batch
    cpu = time.process_time()
    for _ in range(rounds):
        answers = await scripts._send(redis, flat)
        assert answers[-1] == 15, answers[-1]
    return as_jobs, batched, (time.process_time() - cpu) / (rounds * batch) * 1e6


async def main(batch: int, rounds: int, runs: int) -> None:
    server = PrivateRedis().start()
    try:
        redis = await create_pool(arq_settings(server.url))
        scripts.batch_calls(redis)
        script = redis.register_script(SCRIPT)
        await preload(redis, [script])
        lean: Sender = scripts._send
        senders: dict[str, Sender] = {"lean": lean, "pipeline": pipeline_send}
        figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in senders}
        await measure(redis, script, batch, max(rounds // 10, 1))  # warm up
        for _ in range(runs):
            for name, send in senders.items():
                scripts._send = send  # type: ignore[assignment]
                figures[name].append(await measure(redis, script, batch, rounds))
        scripts._send = lean  # type: ignore[assignment]
        await redis.aclose()
    finally:
        server.stop()
    print(f"batch={batch} rounds={rounds} runs={runs}: CPU µs a call, medians (runs)")
    ways = ("as jobs call", "through the Batcher", "sender alone")
    for name, runs_ in figures.items():
        print(f"{name}:")
        for i, way in enumerate(ways):
            print(f"  {way:20s} {statistics.median(r[i] for r in runs_):6.2f} ({_list([r[i] for r in runs_])})")
    for i, way in enumerate(ways):
        ratio = statistics.median(r[i] for r in figures["lean"]) / statistics.median(r[i] for r in figures["pipeline"])
        print(f"lean / pipeline, {way}: {ratio:.2f}")


def _list(figures: list[float]) -> str:
    return ", ".join(f"{f:.2f}" for f in figures)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    asyncio.run(main(options.batch, options.rounds, options.runs))
