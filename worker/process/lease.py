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
    RETRY_KEY_TTL_S,
    RETRY_PREFIX,
    bulk_key,
    in_progress_key,
    job_key,
    result_key,
    retry_key,
    workers_key,
)
from ..limits.fair import FairQueue, running_key
from ..lua import registry as lua
from . import wake
from .scripts import run_scripts

if TYPE_CHECKING:
    from ..contract.models import JobResult
    from ..contract.store import ResultStore


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
        self._claim = lua.register(redis, "lease_claim", RETRY_KEY_TTL_S=RETRY_KEY_TTL_S)
        self._promote = lua.register(redis, "lease_promote", RETRY_KEY_TTL_S=RETRY_KEY_TTL_S)
        self._release = lua.register(redis, "lease_release")
        self._renew = lua.register(redis, "lease_renew")

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
        """The lease_release script call for a job whose result is being stored (see worker.process.scripts)."""
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
