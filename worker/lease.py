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

from redis.asyncio import Redis

from .keys import in_progress_key, workers_key

# arq's claim of one job, atomically, for a batch: not in progress elsewhere, due now.
# KEYS: queue, in-progress key per job; ARGV: now ms, lease ms, job ids (in KEYS order)
CLAIM = """
local now, lease, claimed = tonumber(ARGV[1]), ARGV[2], {}
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('PSETEX', KEYS[i], lease, '1')
      table.insert(claimed, id)
      table.insert(claimed, score)
    end
  end
end
return claimed
"""

# A worker that has not beaten for this long is not consuming the queue.
HEARTBEAT_STALE_S = 5.0


class Lease:
    def __init__(self, redis: Redis, queue_name: str, lease_s: float) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.lease_ms = int(lease_s * 1000)
        self._claim = redis.register_script(CLAIM)

    async def claim(self, job_ids: list[str], now_ms: int) -> list[tuple[str, int]]:
        """The ids among `job_ids` this worker now holds, with their queue scores (enqueue ms)."""
        claimed = await self._claim(
            keys=[self.queue_name, *(in_progress_key(i) for i in job_ids)], args=[now_ms, self.lease_ms, *job_ids]
        )
        return [(raw.decode(), int(float(score))) for raw, score in zip(claimed[::2], claimed[1::2], strict=True)]

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


async def workers_alive(redis: Redis, queue_name: str) -> int:
    """How many workers have beaten recently on this queue."""
    return int(await redis.zcount(workers_key(queue_name), time.time() - HEARTBEAT_STALE_S, "+inf"))
