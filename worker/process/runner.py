"""RouterWorker: arq's Worker, picking and running jobs our way.

- one Lua call claims a batch of due jobs under a short lease (worker.process.lease) and hands back
  their records and run counts, where arq spends a round trip per job on each; a poll reads
  only as many queue entries as the worker has free slots (and a margin), not arq's 5x its
  concurrency, so a busy worker's polls do not grow with the queue;
- a job runs here, not in arq's `run_job`: no task, log line or arq round trip per job; the job
  stores its result and releases itself in one round trip (worker.calls.jobs, worker.process.lease); a job
  that waits goes back to the queue at now + its defer (arq's Retry), one cancelled by a
  shutdown past its grace stays queued for another run;
- an idle worker blocks on the queue's wake-up (worker.process.wake) until a job arrives, the next
  deferred job is due, or IDLE_POLL_S, instead of polling every POLL_DELAY_S: a job that
  arrives to it starts within about a millisecond; a worker with no free slot polls as arq does;
- no jobs are picked while the queue is paused (worker.limits.gate) or the worker is draining;
- every queue entry ends somewhere: an id that cannot be used goes to the quarantine, a job
  with no record or one that cannot run ends as a failed `invalid_job` result, a copy of a job
  that has a result already is dropped; nothing escapes into arq's loop to stop the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from signal import Signals
from typing import Any

from arq.constants import retry_key_prefix
from arq.cron import CronJob
from arq.jobs import deserialize_job_raw
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import Function, Retry, Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..calls import jobs
from ..contract.keys import RETRY_KEY_TTL_S, bulk_key
from ..limits.fair import passes_key, waiting_key
from .health import HEALTH
from .lease import Claimed, Lease
from .preflight import await_redis
from .quarantine import unusable
from .resources import Resources
from .wake import Wake

log = logging.getLogger("llm_router.worker")

# A poll reads the worker's free slots plus this many queue entries more (at least): room for
# entries that turn out not to be runnable (held elsewhere, finished copies, no record).
READ_MARGIN = 16
# How often the worker looks for jobs past their backstop (arq's job_timeout: JOB_TIMEOUT_S + 30 s).
BACKSTOP_SWEEP_S = 1.0
# The longest a shutdown waits for one Redis write (the health key's delete) before it exits anyway.
SHUTDOWN_REDIS_S = 2.0


# The cyclic garbage collector's thresholds for a worker (Python's: 700, 10, 10). A job allocates
# a few thousand objects (pydantic models, httpx requests, Redis replies); with a thousand jobs in
# flight the default ran a collection every few jobs, a full one over a heap of every in-flight
# job every few hundred: measured 20 % of the worker's CPU at 1,000 in flight (bench/inflight.py).
GC_THRESHOLDS = (20_000, 50, 50)


def tune_gc() -> None:
    """Fewer, larger collections, and the objects of start-up (imports, settings) frozen out of
    every collection (gc.freeze): nothing of them is garbage."""
    if gc.get_threshold() != GC_THRESHOLDS:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)


class RecordError(Exception):
    """A job record that cannot be run (unknown function, too many runs)."""


class RouterWorker(Worker):
    def __init__(self, *args: Any, lease_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = lease_s  # arq: longest job timeout + 10 s
        self.lease_s = lease_s
        self._draining = False
        self._lease: Lease | None = None
        self._wake: Wake | None = None
        self._starts = 0  # jobs started so far (a poll that started none found the worker idle)
        self._ends = self._ends_seen = 0  # jobs ended so far; and when a burst poll last looked
        self._slot_freed = asyncio.Event()  # a full worker polls again when a job ends
        # the backstop: a job's function cancelled at its deadline (the loop's time), by one sweep
        # for all jobs, not a timer each (_backstop)
        self._deadlines: dict[str, float] = {}
        self._overdue: set[str] = set()
        self._sweep: asyncio.TimerHandle | None = None
        # arq's loop sleeps poll_delay after every poll; here _poll_iteration itself waits
        # (_between_polls): POLL_DELAY_S while busy, the wake-up while idle
        self.busy_poll_s, self.poll_delay_s = self.poll_delay_s, 0.0

    async def main(self) -> None:
        """arq's loop, once Redis answers (worker.process.preflight: what is wrong with REDIS_URL is said
        at once, not after arq's silent retries); in burst mode it also waits for the bulk lane
        to empty (arq looks only at the queue, and a running bulk job leaves it before its slot
        is free again)."""
        tune_gc()
        if (settings := self.ctx.get("settings")) is not None:
            await await_redis(settings.redis_url, log, tick=HEALTH.tick)
        # arq's main runs on_startup at every call: a worker starts up once, however many times a
        # burst worker goes round (each start-up's keeper, webhook sender, held connections and
        # HTTP client would otherwise outlive the shutdown, which sees only the last)
        startup = self.on_startup
        try:
            while True:
                await super().main()
                if not self.burst or not await self._waiting_outside_the_queue():
                    return
                self.on_startup = None
        finally:
            self.on_startup = startup

    async def _waiting_outside_the_queue(self) -> bool:
        """Jobs wait in the bulk lane or a source's sub-queue (worker.limits.fair): arq sees neither."""
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.zcard(bulk_key(self.queue_name))
            pipe.zcard(passes_key(self.queue_name))
            return any(await pipe.execute())

    async def _poll_iteration(self) -> None:
        """arq's poll, reading no more entries than the free slots can take (and a margin)."""
        resources = self.ctx.get("resources")
        self.allow_pick_jobs = not self._draining and (resources is None or resources.paused is None)
        if self.burst and self.max_burst_jobs >= 0:
            await super()._poll_iteration()
            await asyncio.sleep(self.busy_poll_s)
            return
        started = self._starts
        await self._poll(resources)
        if self.burst:
            await self._between_burst_polls(started=self._starts - started)
        else:
            await self._between_polls(resources, started=self._starts - started)

    async def _between_burst_polls(self, started: int) -> None:
        """Burst mode's wait for the next poll (arq then looks whether the queue is empty): none
        after a poll that started jobs while slots remain, or after a job ended (the queue may be
        empty now); until a job ends while any runs (POLL_DELAY_S at most); else POLL_DELAY_S. A
        burst worker draining a queue refills a slot when it frees, as a long-running one does,
        not at its next poll, and stops when its last job ends, not up to POLL_DELAY_S later."""
        free = self.max_jobs - self.job_counter
        ended, self._ends_seen = self._ends != self._ends_seen, self._ends
        if (started or ended) and free > 0:
            return
        if self.job_counter > 0:
            await self._until_a_slot_frees()
            return
        await asyncio.sleep(self.busy_poll_s)

    async def _poll(self, resources: Resources | None) -> None:
        free = self.max_jobs - self.job_counter
        if self.allow_pick_jobs and free > 0:
            job_ids = await self.pool.zrangebyscore(
                self.queue_name, min=float("-inf"), max=timestamp_ms(), start=0, num=free + max(free, READ_MARGIN)
            )
            await self.start_jobs(job_ids)
        await self.heart_beat()

    async def _between_polls(self, resources: Resources | None, started: int) -> None:
        """Wait for the next poll: none after a poll that started jobs while slots remain (more
        may wait); POLL_DELAY_S with no free slot, while paused, or when what is due cannot be
        taken yet (a source at its limit); else, idle, the wake-up (worker.process.wake) until the next
        deferred job is due, IDLE_POLL_S at most."""
        free = self.max_jobs - self.job_counter
        if started and free > 0:
            return
        if resources is None or not self.allow_pick_jobs:
            await asyncio.sleep(self.busy_poll_s)
            return
        if free <= 0:
            await self._until_a_slot_frees()
            return
        wake = self._wake_of(resources)
        wait_s = resources.settings.idle_poll_s
        due = await wake.next_due_ms()
        if due is not None:
            wait_s = min(wait_s, (due - timestamp_ms()) / 1000)
        # due already: a job that came after the poll (its token is there: at once), or one that
        # cannot be taken yet (a source at its limit: POLL_DELAY_S)
        await wake.wait(wait_s if wait_s > 0 else self.busy_poll_s)

    async def _until_a_slot_frees(self) -> None:
        """Until a job ends (its slot is free), POLL_DELAY_S at most."""
        self._slot_freed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._slot_freed.wait(), self.busy_poll_s)

    def _wake_of(self, resources: Resources) -> Wake:
        if self._wake is None:
            q = self.queue_name
            self._wake = Wake(self.pool, q, bulk_key(q), passes_key(q), waiting_key(q, ""))
        return self._wake

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim due jobs for every free slot in one call, looking past the ones other workers
        hold; what the queue leaves free goes to the bulk lane, so interactive jobs never wait
        behind it."""
        resources: Resources = self.ctx["resources"]
        lease = self._lease_of(resources)
        ids = [raw.decode() for raw in job_ids if not await self._quarantined(resources, raw)]
        free = self.max_jobs - self.job_counter
        if ids and free > 0:
            await self._start(resources, await lease.claim(ids, free, timestamp_ms()))
        free = self.max_jobs - self.job_counter
        # the sources' sub-queues, by weight (worker.limits.fair): after the queue's due jobs (deferred
        # ones, a dead worker's, those written straight to the queue), which were all taken fairly
        # once; with FAIR_SHARE off only when the keeper saw jobs there (queued while it was on)
        # and the queue had none due
        if free > 0 and (self._fair_share(resources) or (resources.fair_leftovers and not ids)):
            room = resources.settings.fair_share_slot_waiters - resources.slot_waiters
            if resources.slot_waiters and room <= 0:
                # interactive jobs wait for rate-limit slots: the rest wait their turn in their
                # sub-queues, and bulk jobs behind them (a bulk job would only wait for a slot too)
                return
            if resources.slot_waiters:  # take no more than can wait
                free = min(free, room)
            await self._start(resources, await lease.claim_fair(free, timestamp_ms()))
        free = self.max_jobs - self.job_counter
        if free > 0:
            await self._start(resources, await lease.promote(free, timestamp_ms()))

    @staticmethod
    def _fair_share(resources: Resources) -> bool:
        return resources.settings.fair_share

    def _lease_of(self, resources: Resources) -> Lease:
        if self._lease is None:
            self._lease = resources.lease or Lease(self.pool, self.queue_name, self.lease_s)
        return self._lease

    async def _quarantined(self, resources: Resources, raw_id: bytes) -> bool:
        """Move a queue (or lane) member that cannot be a job id to the quarantine."""
        reason = unusable(raw_id)
        if reason:
            await resources.quarantine.add(raw_id, reason)
        return reason is not None

    async def _start(self, resources: Resources, claimed: list[Claimed]) -> None:
        for job in claimed:
            if await self._quarantined(resources, job.raw_id):
                continue
            job_id = job.raw_id.decode()
            if job.what == "run":
                await self.sem.acquire()  # free: no more ids than slots
                self.job_counter += 1
                self._starts += 1
                task = self.loop.create_task(self.run_claimed(job_id, job))
                task.add_done_callback(lambda _, job_id=job_id: self._ended(job_id))  # type: ignore[misc]
                self.tasks[job_id] = task
            elif job.what == "error":
                await self._cannot_run(job_id, ResponseError(job.record.decode(errors="replace")))
            elif job.what == "missing":
                await jobs.fail_record(
                    resources,
                    job_id,
                    "the queue names this job but it has no record (arq:job:<id> expired or was never written)",
                )
            else:
                log.info("job %s: a copy queued after it finished was dropped, not run again", job_id)

    def _ended(self, job_id: str) -> None:
        """A job's task is over: its slot is free (arq's poll would find it done and drop it)."""
        self.tasks.pop(job_id, None)
        self._overdue.discard(job_id)
        if self._lease is not None:
            self._lease.forget(job_id)
        self._release_sem_dec_counter_on_complete()
        self._ends += 1
        self._slot_freed.set()

    async def run_claimed(self, job_id: str, job: Claimed) -> None:
        """arq's run_job for our job functions, with the record and run count the claim fetched,
        and a net: a record that cannot run fails as `invalid_job` and leaves the queue, instead
        of killing the worker (and every worker after it). Redis going away is not the record's
        fault: the lease runs out and another worker runs the job again. The job's function is
        awaited here, in the task's own coroutine: a frame fewer to resume at every await of the job."""
        try:
            function, ctx, args, kwargs = await self._prepared(job_id, job)
            timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
            self._backstop(job_id, timeout_s)
            try:
                try:
                    status = await function.coroutine(ctx, *args, **kwargs)
                finally:
                    self._deadlines.pop(job_id, None)
            except Retry as retry:
                await self._requeue(job_id, retry)
                return
            except asyncio.CancelledError:
                if self._past_backstop(job_id):
                    raise TimeoutError(f"still running at its backstop, {timeout_s:g}s") from None
                await self._let_go(job_id)  # shutdown past its grace (arq: "cancelled, will be run again")
                return
            self.jobs_complete += 1
            if not ctx.get("released"):  # our job functions store their result and release the job
                await asyncio.shield(self._lease_of(self.ctx["resources"]).release_done(job_id))
            log.debug("job %s: %s", job_id, status)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.error("job %s: Redis went away under it (%s): its lease runs out and it runs again", job_id, exc)
        except Exception as exc:
            await self._cannot_run(job_id, exc)

    def _backstop(self, job_id: str, timeout_s: float) -> None:
        """Cancel the job's function if it still runs `timeout_s` from now: a job ends at its own
        JOB_TIMEOUT_S (worker.calls.jobs) with a result; this guards against a function that ignores
        its own. One sweep every BACKSTOP_SWEEP_S looks at every job's deadline, where a timer
        each (asyncio.timeout) put a TimerHandle a job in the loop's heap and took it out again."""
        self._deadlines[job_id] = self.loop.time() + timeout_s
        if self._sweep is None:
            self._sweep = self.loop.call_later(BACKSTOP_SWEEP_S, self._sweep_deadlines)

    def _sweep_deadlines(self) -> None:
        self._sweep = None
        now = self.loop.time()
        for job_id, deadline in self._deadlines.items():
            task = self.tasks.get(job_id)
            if deadline <= now and job_id not in self._overdue and task is not None:
                self._overdue.add(job_id)
                task.cancel()
        if self._deadlines:
            self._sweep = self.loop.call_later(BACKSTOP_SWEEP_S, self._sweep_deadlines)

    def _past_backstop(self, job_id: str) -> bool:
        """Whether the job was cancelled at its backstop (and by nothing else, as asyncio.timeout
        tells its TimeoutError from a cancel): then it is a TimeoutError, not a cancel."""
        if job_id not in self._overdue:
            return False
        self._overdue.discard(job_id)
        task = asyncio.current_task()
        return task is not None and task.uncancel() == 0

    async def _prepared(
        self, job_id: str, job: Claimed
    ) -> tuple[Function | CronJob, dict[str, Any], tuple[Any, ...], dict[str, Any]]:
        """The job's function and its arguments, from the record (RecordError if it cannot run)."""
        name, args, kwargs, enqueue_tries, enqueue_ms = deserialize_job_raw(
            job.record, deserializer=self.job_deserializer
        )
        tries = job.tries
        if enqueue_tries and enqueue_tries > tries:  # a record that says it ran before (arq's `t`)
            tries = enqueue_tries
            await self.pool.setex(retry_key_prefix + job_id, RETRY_KEY_TTL_S, str(tries))
        function = self.functions.get(name)
        if function is None:
            raise RecordError(f"function {name!r} not found")
        if tries > self.max_tries:
            raise RecordError(f"started {tries} times, over {self.max_tries}")
        ctx = {**self.ctx, "job_id": job_id, "job_try": tries, "enqueue_time": ms_to_datetime(enqueue_ms)}
        ctx["score"] = job.score
        log.debug(
            "job %s: %s, run %d, %.3fs after its enqueue", job_id, name, tries, (timestamp_ms() - enqueue_ms) / 1000
        )
        return function, ctx, args, kwargs

    async def _requeue(self, job_id: str, retry: Retry) -> None:
        """A job that waits goes back to the queue at now + its defer (arq's Retry)."""
        self.jobs_retried += 1
        log.debug("job %s: back to the queue for %.2fs", job_id, (retry.defer_score or 0) / 1000)
        at = timestamp_ms() + (retry.defer_score or 0)
        uncounted, in_place = getattr(retry, "uncounted", False), getattr(retry, "in_place", False)
        lease = self._lease_of(self.ctx["resources"])
        await asyncio.shield(lease.requeue(job_id, at, uncounted=uncounted, in_place=in_place))

    async def _let_go(self, job_id: str) -> None:
        """A job cancelled by a shutdown past its grace stays queued for another run."""
        self.jobs_retried += 1
        self.ctx["resources"].outcomes["requeued"] += 1
        log.info("job %s: cancelled, it will run again", job_id)
        await asyncio.shield(self._lease_of(self.ctx["resources"]).let_go(job_id, timestamp_ms()))

    async def _cannot_run(self, job_id: str, exc: BaseException) -> None:
        """A failed `invalid_job` result naming what went wrong (unless a result is stored), and
        the job off the queue."""
        self.jobs_failed += 1
        log.error("job %s: arq could not run its record: %s: %s", job_id, type(exc).__name__, exc)
        try:
            resources: Resources = self.ctx["resources"]
            if await resources.store.get(job_id) is None:  # never overwrite a stored result
                await jobs.fail_record(resources, job_id, f"arq could not run the record: {type(exc).__name__}: {exc}")
            await self._lease_of(resources).drop(job_id)
        except Exception:
            log.exception("job %s: could not store its failure", job_id)

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        self._draining = True
        super().handle_sig_wait_for_completion(signum)

    async def close(self) -> None:
        """arq's `close`, with its Redis write bounded (SHUTDOWN_REDIS_S): with Redis gone, the
        client's retries (about 75 s, worker.contract.connections) would hold the exit past any
        grace a supervisor gives; the health key it deletes expires by itself."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values())
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pool.delete(self.health_check_key), SHUTDOWN_REDIS_S)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None
