"""What a worker holds and proves in Redis: its claim on jobs, the lease that keeps them, and
its heartbeat.

Recovery bound: arq marks a job in progress for the longest job timeout + 10 s, so a job of
a SIGKILLed worker would wait that long. Here the mark is a lease of LEASE_S that the
worker renews every LEASE_S/3 s (at most 1 s) while the job runs: another worker starts it
again within LEASE_S (+ one poll) of the kill.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ..contract.keys import (
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    RESULT_PREFIX,
    RETRY_PREFIX,
    bulk_key,
    in_progress_key,
    job_key,
    result_key,
    retry_key,
    workers_key,
)
from ..limits.fair import FairQueue, running_key
from . import wake
from .scripts import run_scripts

if TYPE_CHECKING:
    from ..contract.models import JobResult
    from ..contract.store import ResultStore

# arq's claim of one job, atomically, for every id a poll read: not in progress elsewhere, due
# now. For each such job: its id, score and what to do: 'run' (held under the lease, at most
# ARGV[3] of them: the worker's free slots), 'done' (it has a result already: a copy queued
# again is dropped, never run or billed twice) or 'missing' (no record under the id: taken
# off the queue; the caller fails it). Due jobs past the free slots stay queued, untouched.
# A claimed job is scored at its lease's end: out of every worker's next reads while it runs
# (so a poll sees the jobs that wait), due again if its worker dies. arq's Retry adds the
# defer to the score it was given, so the job comes back at now + defer as usual.
# A 'run' job also comes with what arq's run_job would fetch in a round trip of its own: its
# record and its run count (arq's retry key, incremented); a count Redis cannot increment makes
# it 'error' instead, with Redis's words (the caller fails the job).
# The in-progress mark holds the claim's token: the same claim sent again (the client retrying
# after a lost answer, worker.contract.connections) hands over the jobs its first run took, the same ones,
# their run counted once.
# KEYS: queue, then per job: in-progress key, job record key, result key, retry key
# ARGV: now ms, lease ms, free slots, claim token, job ids (in KEYS order)
CLAIM = """
local now, lease, free, token, out = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4], {}
for i = 5, #ARGV do
  local id, k = ARGV[i], 2 + (i - 5) * 4
  local held = redis.call('GET', KEYS[k])
  if held == token and free > 0 then
    free = free - 1
    local tries = tonumber(redis.call('GET', KEYS[k + 3])) or 0
    local record = redis.call('GET', KEYS[k + 1])
    table.insert(out, id)
    table.insert(out, redis.call('ZSCORE', KEYS[1], id) or now + tonumber(lease))
    table.insert(out, record and 'run' or 'missing')
    table.insert(out, record or '')
    table.insert(out, tries)
  elseif not held then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      local what, record, tries = nil, '', 0
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
        redis.call('PSETEX', KEYS[k], lease, token)
        redis.call('ZADD', KEYS[1], score, id)
        record = redis.call('GET', KEYS[k + 1])
        tries = redis.pcall('INCR', KEYS[k + 3])
        if type(tries) == 'table' then
          what, record, tries = 'error', tries.err, 0
        else
          redis.call('EXPIRE', KEYS[k + 3], 88400)
        end
      end
      if what then
        table.insert(out, id)
        table.insert(out, score)
        table.insert(out, what)
        table.insert(out, record)
        table.insert(out, tries)
      end
    end
  end
end
return out
"""

# Bulk jobs from the bulk lane into the queue for this worker's free slots, claimed at once:
# held under the lease and scored at the lease's end, so they stay out of other workers' reads
# while they run and are due again if this worker dies. The same outcomes and answers as CLAIM;
# the caller quarantines an id that cannot be one (the lane is written by others too).
# KEYS: bulk lane, queue; ARGV: how many, now ms, lease ms, job record / in-progress / result /
# retry prefixes
PROMOTE = """
local out, score = {}, tonumber(ARGV[2]) + tonumber(ARGV[3])
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
for i = 1, #popped, 2 do
  local id, what, record, tries = popped[i], 'run', '', 0
  if redis.call('EXISTS', ARGV[6] .. id) == 1 then
    what = 'done'
    redis.call('DEL', ARGV[4] .. id)
  elseif redis.call('EXISTS', ARGV[4] .. id) == 0 then
    what = 'missing'
  else
    redis.call('ZADD', KEYS[2], score, id)
    redis.call('PSETEX', ARGV[5] .. id, ARGV[3], '1')
    record = redis.call('GET', ARGV[4] .. id)
    tries = redis.pcall('INCR', ARGV[7] .. id)
    if type(tries) == 'table' then
      what, record, tries = 'error', tries.err, 0
    else
      redis.call('EXPIRE', ARGV[7] .. id, 88400)
    end
  end
  table.insert(out, id)
  table.insert(out, score)
  table.insert(out, what)
  table.insert(out, record)
  table.insert(out, tries)
end
return out
"""

# The end of a job whose result is stored: off the queue, its record, run count and lease gone
# (arq's finish_job), sent in the same round trip as the result. Nothing happens unless the
# result is there: a result that was not stored never takes its job off the queue.
# A job its source's sub-queue gave (worker.limits.fair) also stops counting as its source's running.
# KEYS: result, queue, job record, in-progress, retry[, the source's running jobs]; ARGV: job id
RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
if KEYS[6] then redis.call('ZREM', KEYS[6], ARGV[1]) end
return 1
"""

# The keeper's renewal of every lease this worker holds, in one call: each in-progress mark
# gets LEASE_S more, and its queue entry is scored at the new lease's end (never earlier), so
# a job running longer than a lease stays out of every poll's read. A job that has ended (no
# mark) is left alone: its queue entry, if any, is its end's. A job a source's sub-queue gave
# (worker.limits.fair) stays listed as its source's running for as long.
# KEYS: queue; ARGV: lease ms, now ms, in-progress prefix, running prefix, then job id, source ('': none) pairs
RENEW = """
local lease, score, sources = tonumber(ARGV[1]), tonumber(ARGV[2]) + tonumber(ARGV[1]), {}
for i = 5, #ARGV, 2 do
  if redis.call('PEXPIRE', ARGV[3] .. ARGV[i], lease) == 1 then
    redis.call('ZADD', KEYS[1], 'XX', 'GT', score, ARGV[i])
    if ARGV[i + 1] ~= '' then
      redis.call('ZADD', ARGV[4] .. ARGV[i + 1], 'XX', 'GT', score, ARGV[i])
      sources[ARGV[i + 1]] = true
    end
  end
end
for source in pairs(sources) do redis.call('PEXPIRE', ARGV[4] .. source, lease) end
return 0
"""

# A worker that has not beaten for this long is not consuming the queue.
HEARTBEAT_STALE_S = 5.0


@dataclass
class Claimed:
    """One queue entry a claim dealt with. `what`: 'run' (this worker holds it: `record` is its
    arq record, `tries` its run count), 'done', 'missing', or 'error' (`record` says what Redis
    refused). The id stays bytes until it is checked (worker.process.quarantine)."""

    raw_id: bytes
    score: int
    what: str
    record: bytes = b""
    tries: int = 0
    source: str | None = None  # the sub-queue it came from (worker.limits.fair)
    due: bytes | None = None  # its score there


class Lease:
    def __init__(self, redis: Redis, queue_name: str, lease_s: float, fair: FairQueue | None = None) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.lease_ms = int(lease_s * 1000)
        self.fair = fair
        # job id -> source, of the jobs this worker took from a source's sub-queue and holds, and
        # their scores there
        self.sources: dict[str, str] = {}
        self.dues: dict[str, bytes] = {}
        self._claim = redis.register_script(CLAIM)
        self._promote = redis.register_script(PROMOTE)
        self._release = redis.register_script(RELEASE)
        self._renew = redis.register_script(RENEW)

    @property
    def scripts(self) -> list[AsyncScript]:
        return [self._claim, self._promote, self._release, self._renew, *(self.fair.scripts if self.fair else [])]

    async def claim_fair(self, free: int, now_ms: int) -> list[Claimed]:
        """Up to `free` jobs from the sources' sub-queues, by weight (worker.limits.fair); this worker
        now holds the 'run' ones."""
        if self.fair is None:
            return []
        claimed = []
        for id_, score, what, record, tries, source, due in await self.fair.claim(free, now_ms, self.lease_ms):
            job = Claimed(id_, int(float(score)), what.decode(), record or b"", int(tries), source.decode(), due)
            if job.what == "run":
                self.sources[id_.decode(errors="replace")] = source.decode()
                self.dues[id_.decode(errors="replace")] = due
            claimed.append(job)
        return claimed

    def forget(self, job_id: str) -> None:
        """The job's task is over: no longer held here."""
        self.sources.pop(job_id, None)
        self.dues.pop(job_id, None)

    async def claim(self, job_ids: list[str], free: int, now_ms: int) -> list[Claimed]:
        """The due jobs among `job_ids` that no other worker holds, with what became of each;
        this worker now holds the 'run' ones, `free` at most."""
        keys = [k for i in job_ids for k in (in_progress_key(i), job_key(i), result_key(i), retry_key(i))]
        token = uuid.uuid4().hex[:16]
        out = await self._claim(keys=[self.queue_name, *keys], args=[now_ms, self.lease_ms, free, token, *job_ids])
        return _claimed(out)

    async def promote(self, count: int, now_ms: int) -> list[Claimed]:
        """Up to `count` bulk jobs, front first; this worker now holds the 'run' ones."""
        out = await self._promote(
            keys=[bulk_key(self.queue_name), self.queue_name],
            args=[count, now_ms, self.lease_ms, JOB_PREFIX, IN_PROGRESS_PREFIX, RESULT_PREFIX, RETRY_PREFIX],
        )
        return _claimed(out)

    def release_call(self, job_id: str) -> tuple[AsyncScript, list[str], list[str]]:
        """The RELEASE script call for a job whose result is being stored (see worker.process.scripts)."""
        keys = [result_key(job_id), self.queue_name, job_key(job_id), in_progress_key(job_id), retry_key(job_id)]
        if (source := self.sources.get(job_id)) is not None:
            keys.append(running_key(self.queue_name, source))
        return self._release, keys, [job_id]

    async def save_result(
        self, store: ResultStore, result: JobResult, dead_letter: str | None = None, callback_url: str | None = None
    ) -> int:
        """Store the job's result (worker.contract.store) and release the job, in one round trip: what
        arq's finish_job did in a second one. Returns the store's answer (dead letters dropped)."""
        save = store.save_call(result, dead_letter, callback_url)
        dropped, _ = await run_scripts(self.redis, [save, self.release_call(result.job_id)], rerun_rest=True)
        return int(dropped)

    async def release(self, job_id: str) -> None:
        """Release a job whose result another script stored (a batch line's)."""
        await run_scripts(self.redis, [self.release_call(job_id)])

    async def release_done(self, job_id: str) -> None:
        """Release a job that ended without releasing itself (arq's finish_job)."""
        await self.drop(job_id)

    async def requeue(self, job_id: str, at_ms: int, uncounted: bool = False, in_place: bool = False) -> None:
        """A job that must run again (arq's Retry): due at `at_ms`, its lease given up (back in its
        source's sub-queue if it came from one; `uncounted`: the run it had is given back, it did
        nothing; `in_place`: at its own place there, not at `at_ms`)."""
        if self.fair is not None and (source := self.sources.get(job_id)) is not None:
            due = self.dues.get(job_id) if in_place else None
            call = self.fair.requeue_call(job_id, source, due or at_ms, uncounted)
            await run_scripts(self.redis, [call])
            return
        async with self.redis.pipeline(transaction=True) as tx:
            tx.zadd(self.queue_name, {job_id: at_ms}, xx=True)
            tx.delete(in_progress_key(job_id))
            wake.signal(tx, self.queue_name)  # an idle worker takes it, or blocks until it is due
            await tx.execute()

    async def let_go(self, job_id: str, now_ms: int) -> None:
        """A job cancelled before it ended (shutdown past its grace): its lease given up, due again
        at once for another worker (arq's "cancelled, will be run again")."""
        await self.requeue(job_id, now_ms)

    async def drop(self, job_id: str) -> None:
        """Forget a job arq could not run: off the queue, its record and counters gone."""
        async with self.redis.pipeline(transaction=True) as tx:
            tx.zrem(self.queue_name, job_id)
            tx.delete(job_key(job_id), in_progress_key(job_id), retry_key(job_id))
            if (source := self.sources.get(job_id)) is not None:
                tx.zrem(running_key(self.queue_name, source), job_id)
            await tx.execute()

    async def renew(self, job_ids: Iterable[str]) -> None:
        """Every lease of `job_ids` renewed, in one call (one command, however many jobs run)."""
        ids = list(job_ids)
        if ids:
            now = int(time.time() * 1000)
            pairs = [v for i in ids for v in (i, self.sources.get(i, ""))]
            args: list[Any] = [self.lease_ms, now, IN_PROGRESS_PREFIX, running_key(self.queue_name, ""), *pairs]
            await self._renew(keys=[self.queue_name], args=args)

    async def beat(self, worker_id: str) -> None:
        """Say this worker is consuming the queue (producers warn when no worker is)."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(workers_key(self.queue_name), {worker_id: now})
            pipe.zremrangebyscore(workers_key(self.queue_name), "-inf", now - 10 * HEARTBEAT_STALE_S)
            await pipe.execute()


def _claimed(out: list[Any]) -> list[Claimed]:
    """The scripts' flat answers, five values a job."""
    return [
        Claimed(out[i], int(float(out[i + 1])), out[i + 2].decode(), out[i + 3] or b"", int(out[i + 4]))
        for i in range(0, len(out), 5)
    ]


async def workers_alive(redis: Redis, queue_name: str) -> int:
    """How many workers have beaten recently on this queue."""
    return int(await redis.zcount(workers_key(queue_name), time.time() - HEARTBEAT_STALE_S, "+inf"))
