"""RouterWorker: arq's Worker, picking jobs our way.

- one Lua call claims a batch of due jobs under a short lease (worker.lease), where arq
  spends four round trips per job;
- no jobs are picked while the queue is paused (worker.gate) or the worker is draining;
- every queue entry ends somewhere: an id that cannot be used goes to the quarantine, a job
  with no record or one arq cannot run ends as a failed `invalid_job` result, a copy of a job
  that has a result already is dropped; nothing escapes into arq's loop to stop the worker.
"""

from __future__ import annotations

import logging
from signal import Signals
from typing import Any

from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import jobs
from .keys import bulk_key
from .lease import Lease
from .quarantine import unusable
from .resources import Resources

log = logging.getLogger("llm_router.worker")


class RouterWorker(Worker):
    def __init__(self, *args: Any, lease_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = lease_s  # arq: longest job timeout + 10 s
        self.lease_s = lease_s
        self._draining = False
        self._lease: Lease | None = None

    async def main(self) -> None:
        """arq's loop; in burst mode it also waits for the bulk lane to empty (arq looks only
        at the queue, and a running bulk job leaves it before its slot is free again)."""
        while True:
            await super().main()
            if not self.burst or not await self.pool.zcard(bulk_key(self.queue_name)):
                return

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim due jobs for every free slot in one call, looking past the ones other workers
        hold (measured 1.4x arq's no-op job rate); what the queue leaves free goes to the bulk
        lane, so interactive jobs never wait behind it."""
        resources: Resources = self.ctx["resources"]
        if self._lease is None:
            self._lease = Lease(self.pool, self.queue_name, self.lease_s)
        ids = [raw.decode() for raw in job_ids if not await self._quarantined(resources, raw)]
        free = self.max_jobs - self.job_counter
        if ids and free > 0:
            await self._start(resources, await self._lease.claim(ids, free, timestamp_ms()))
        free = self.max_jobs - self.job_counter
        if free > 0:
            await self._start(resources, await self._lease.promote(free, timestamp_ms()))

    async def _quarantined(self, resources: Resources, raw_id: bytes) -> bool:
        """Move a queue (or lane) member that cannot be a job id to the quarantine."""
        reason = unusable(raw_id)
        if reason:
            await resources.quarantine.add(raw_id, reason)
        return reason is not None

    async def _start(self, resources: Resources, claimed: list[tuple[bytes, int, str]]) -> None:
        for raw_id, score, what in claimed:
            if await self._quarantined(resources, raw_id):
                continue
            job_id = raw_id.decode()
            if what == "run":
                await self.sem.acquire()  # free: no more ids than slots
                self.job_counter += 1
                task = self.loop.create_task(self.run_job(job_id, score))
                task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job_id] = task
            elif what == "missing":
                await jobs.fail_record(
                    resources,
                    job_id,
                    "the queue names this job but it has no record (arq:job:<id> expired or was never written)",
                )
            else:
                log.info("job %s: a copy queued after it finished was dropped, not run again", job_id)

    async def run_job(self, job_id: str, score: int) -> None:
        """arq's run, with a net: a record arq trips on fails as `invalid_job` and leaves the
        queue, instead of killing the worker (and every worker after it). Redis going away is not
        the record's fault: the lease runs out and another worker runs the job again."""
        try:
            await super().run_job(job_id, score)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.error("job %s: Redis went away under it (%s): its lease runs out and it runs again", job_id, exc)
        except Exception as exc:
            log.error("job %s: arq could not run its record: %s: %s", job_id, type(exc).__name__, exc)
            try:
                resources: Resources = self.ctx["resources"]
                if await resources.store.get(job_id) is None:  # never overwrite a stored result
                    await jobs.fail_record(
                        resources, job_id, f"arq could not run the record: {type(exc).__name__}: {exc}"
                    )
                if self._lease is not None:
                    await self._lease.drop(job_id)
            except Exception:
                log.exception("job %s: could not store its failure", job_id)

    async def _poll_iteration(self) -> None:
        resources = self.ctx.get("resources")
        self.allow_pick_jobs = not self._draining and (resources is None or resources.paused is None)
        await super()._poll_iteration()

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        self._draining = True
        super().handle_sig_wait_for_completion(signum)
