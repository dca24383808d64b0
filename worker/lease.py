"""What a worker holds and proves in Redis: its claim on jobs, the lease that keeps them, and
its heartbeat.

Recovery bound: arq marks a job in progress for the longest job timeout + 10 s, so a job of
a SIGKILLed worker would wait that long. Here the mark is a lease of LEASE_S that the
worker renews every LEASE_S/3 s (at most 1 s) while the job runs: another worker starts it
again within LEASE_S (+ one poll) of the kill.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from .keys import (
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    RESULT_PREFIX,
    bulk_key,
    in_progress_key,
    job_key,
    result_key,
    retry_key,
    workers_key,
)

# arq's claim of one job, atomically, for every id a poll read: not in progress elsewhere, due
# now. For each such job: its id, score and what to do: 'run' (held under the lease, at most
# ARGV[3] of them: the worker's free slots), 'done' (it has a result already: a copy queued
# again is dropped, never run or billed twice) or 'missing' (no record under the id: taken
# off the queue; the caller fails it). Due jobs past the free slots stay queued, untouched.
# A claimed job is scored at its lease's end: out of every worker's next reads while it runs
# (so a poll sees the jobs that wait), due again if its worker dies. arq's Retry adds the
# defer to the score it was given, so the job comes back at now + defer as usual.
# KEYS: queue, then per job: in-progress key, job record key, result key
# ARGV: now ms, lease ms, free slots, job ids (in KEYS order)
CLAIM = """
local now, lease, free, out = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), {}
for i = 4, #ARGV do
  local id, k = ARGV[i], 2 + (i - 4) * 3
  if redis.call('EXISTS', KEYS[k]) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      local what = nil
      if redis.call('EXISTS', KEYS[k + 2]) == 1 then
        what = 'done'
        redis.call('ZREM', KEYS[1], id)
        redis.call('DEL', KEYS[k + 1])
      elseif redis.call('EXISTS', KEYS[k + 1]) == 0 then
        what = 'missing'
        redis.call('ZREM', KEYS[1], id)
      elseif free > 0 then
        what = 'run'
        free = free - 1
        score = now + tonumber(lease)
        redis.call('PSETEX', KEYS[k], lease, '1')
        redis.call('ZADD', KEYS[1], score, id)
      end
      if what then
        table.insert(out, id)
        table.insert(out, score)
        table.insert(out, what)
      end
    end
  end
end
return out
"""

# Bulk jobs from the bulk lane into the queue for this worker's free slots, claimed at once:
# held under the lease and scored at the lease's end, so they stay out of other workers' reads
# while they run and are due again if this worker dies. The same outcomes as CLAIM; the caller
# quarantines an id that cannot be one (the lane is written by others too).
# KEYS: bulk lane, queue; ARGV: how many, now ms, lease ms, job record / in-progress / result prefixes
PROMOTE = """
local out, score = {}, tonumber(ARGV[2]) + tonumber(ARGV[3])
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
for i = 1, #popped, 2 do
  local id, what = popped[i], 'run'
  if redis.call('EXISTS', ARGV[6] .. id) == 1 then
    what = 'done'
    redis.call('DEL', ARGV[4] .. id)
  elseif redis.call('EXISTS', ARGV[4] .. id) == 0 then
    what = 'missing'
  else
    redis.call('ZADD', KEYS[2], score, id)
    redis.call('PSETEX', ARGV[5] .. id, ARGV[3], '1')
  end
  table.insert(out, id)
  table.insert(out, score)
  table.insert(out, what)
end
return out
"""

# A worker that has not beaten for this long is not consuming the queue.
HEARTBEAT_STALE_S = 5.0


class Lease:
    def __init__(self, redis: Redis, queue_name: str, lease_s: float) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.lease_ms = int(lease_s * 1000)
        self._claim = redis.register_script(CLAIM)
        self._promote = redis.register_script(PROMOTE)

    async def claim(self, job_ids: list[str], free: int, now_ms: int) -> list[tuple[bytes, int, str]]:
        """(id, queue score in ms, 'run' | 'done' | 'missing') for the due jobs among `job_ids`
        that no other worker holds; this worker now holds the 'run' ones, `free` at most."""
        keys = [k for i in job_ids for k in (in_progress_key(i), job_key(i), result_key(i))]
        out = await self._claim(keys=[self.queue_name, *keys], args=[now_ms, self.lease_ms, free, *job_ids])
        return _triples(out)

    async def promote(self, count: int, now_ms: int) -> list[tuple[bytes, int, str]]:
        """Up to `count` bulk jobs, front first: (raw id, score, 'run' | 'done' | 'missing');
        this worker now holds the 'run' ones."""
        out = await self._promote(
            keys=[bulk_key(self.queue_name), self.queue_name],
            args=[count, now_ms, self.lease_ms, JOB_PREFIX, IN_PROGRESS_PREFIX, RESULT_PREFIX],
        )
        return _triples(out)

    async def drop(self, job_id: str) -> None:
        """Forget a job arq could not run: off the queue, its record and counters gone."""
        async with self.redis.pipeline(transaction=True) as tx:
            tx.zrem(self.queue_name, job_id)
            tx.delete(job_key(job_id), in_progress_key(job_id), retry_key(job_id))
            await tx.execute()

    async def renew(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.pexpire(in_progress_key(job_id), self.lease_ms)
            await pipe.execute()

    async def beat(self, worker_id: str) -> None:
        """Say this worker is consuming the queue (producers warn when no worker is)."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(workers_key(self.queue_name), {worker_id: now})
            pipe.zremrangebyscore(workers_key(self.queue_name), "-inf", now - 10 * HEARTBEAT_STALE_S)
            await pipe.execute()


def _triples(out: list[Any]) -> list[tuple[bytes, int, str]]:
    """The scripts' flat answers as (raw id, score, what); ids stay bytes until checked."""
    return [(out[i], int(float(out[i + 1])), out[i + 2].decode()) for i in range(0, len(out), 3)]


async def workers_alive(redis: Redis, queue_name: str) -> int:
    """How many workers have beaten recently on this queue."""
    return int(await redis.zcount(workers_key(queue_name), time.time() - HEARTBEAT_STALE_S, "+inf"))
