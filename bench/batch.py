"""Batch submit benchmark: N lines of an OpenAI Batch file into Redis, in one run:

  (a) `producer.batches.submit(path)` in a process of its own: lines/s from the call to the
      batch record, and the peak RSS of that process (the file is read as a stream)
  (b) arq's own `ArqRedis.enqueue_job`, one job after another, the same JSON records: jobs/s

Goals: (a) >= 10,000 lines/s and >= 5x (b); peak RSS <= 150 MB. No worker runs: this is the
producer's side only.

    python -m bench.batch [--lines 50000] [--arq-jobs 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arq.connections import RedisSettings, create_pool

from harness.redis_server import PrivateRedis
from producers import Producer
from worker.contract import serde

QUEUE = "llm-router:bench-batch"


def write_input(path: Path, lines: int) -> int:
    """An OpenAI Batch file of `lines` chat requests; its size in bytes."""
    with path.open("w") as out:
        for i in range(lines):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Summarise item {i}: " + "x" * 400}],
                "max_tokens": 200,
            }
            out.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
            out.write("\n")
    return path.stat().st_size


async def submit(redis_url: str, path: str) -> None:
    """The child: submit the file, print elapsed seconds and this process's peak RSS (MB)."""
    async with Producer(redis_url, queue_name=QUEUE) as producer:
        started = time.perf_counter()
        batch = await producer.batches.submit(path)
        elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"elapsed": elapsed, "lines": batch.request_counts.total, "peak_mb": peak_mb}))


async def arq_one_by_one(redis_url: str, jobs: int) -> float:
    """arq's enqueue_job, awaited one after another, with our JSON serializer: jobs/s."""
    pool = await create_pool(
        RedisSettings.from_dsn(redis_url),
        default_queue_name=QUEUE + ":arq",
        job_serializer=serde.dumps,
        job_deserializer=serde.loads,
    )
    payload = {"kind": "chat", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 420}]}
    started = time.perf_counter()
    for _ in range(jobs):
        await pool.enqueue_job("chat", payload)
    elapsed = time.perf_counter() - started
    await pool.aclose()
    return jobs / elapsed


def run(lines: int, arq_jobs: int) -> None:
    with PrivateRedis() as redis, tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "input.jsonl"
        size = write_input(path, lines)
        child = subprocess.run(
            [sys.executable, "-m", "bench.batch", "--child", redis.url, str(path)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        figures = json.loads(child.stdout)
        arq_rate = asyncio.run(arq_one_by_one(redis.url, arq_jobs))
    rate = figures["lines"] / figures["elapsed"]
    print(f"lines={lines} ({size / 1e6:.0f} MB) cores={os.cpu_count()}")
    print(
        f"(a) batches.submit       {rate:8.0f} lines/s   peak RSS {figures['peak_mb']:.0f} MB"
        f"  ({figures['elapsed']:.2f}s)"
    )
    print(f"(b) arq enqueue_job      {arq_rate:8.0f} jobs/s   (one by one, {arq_jobs} jobs)")
    print(f"submit / arq = {rate / arq_rate:.1f}   (goal >= 5; submit goal >= 10,000 lines/s; RSS goal <= 150 MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--arq-jobs", type=int, default=5_000)
    parser.add_argument("--child", nargs=2, metavar=("REDIS_URL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(submit(*args.child))
    else:
        run(args.lines, args.arq_jobs)


if __name__ == "__main__":
    main()
