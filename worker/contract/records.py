"""Job records: jobs validated and written to the queue in arq's job format (JSON, see
worker.contract.serde), the one place that does. The producer's API (producers.api), the ingress and
the batch store (worker.batches.store: a schedule's batches, made by the workers) write through it.

    records = JobRecords(redis, settings, source="billing")
    [(job_id, created)] = await records.write([(job, None)])

Tenancy is a parameter, not a subclass: `tenant=True` fixes the records' `source` (a job naming
another source is refused) and puts every job id in the source's namespace, `<source>@<key>`
(`tenant_job_id`), as the ingress does for a bearer token's jobs.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from arq.jobs import SerializationError
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ..limits import fair
from ..lua import registry as lua
from ..outputs import callbacks
from ..process import wake
from . import bounds, serde
from .keys import JOB_EXPIRES_EXTRA_MS, arq_result_key, bulk_key, digest_key, job_key, result_key, wake_key
from .models import JobBase, check_job_id, describe_validation_error
from .settings import Settings

J = TypeVar("J", bound=JobBase)
# How a script is run: `await call(script, keys, args)` (the ingress sends concurrent requests'
# scripts together: producers.coalesce.ScriptBatches.call)
ScriptCall = Callable[[AsyncScript, list[str], list[Any]], Awaitable[Any]]

# A digest outlives the result it guards by a day.
DIGEST_EXTRA_S = 24 * 3600
# A bulk job's record waits in Redis for a week at most (a batch's window is at most that).
BULK_RECORD_TTL_MS = 7 * 24 * 3600 * 1000


class JobRejected(ValueError):
    """A job failed validation; nothing was enqueued. `field` names the problem."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class JobConflict(JobRejected):
    """A job id already names a different job (queued, running or done): nothing was enqueued
    under it. Resend the same job to get its result, or pick a new id."""


class SourceOverQuota(JobRejected):
    """The job's source is far over its quota (SOURCE_LIMITS: rpm, tpm or concurrency): more of its
    jobs wait than the quota clears in a minute (worker.limits.fair.clears_in_a_minute). Nothing was
    enqueued; `retry_after` is the seconds until it would be accepted again (at the quota's pace)."""

    def __init__(self, field: str, message: str, retry_after: int) -> None:
        super().__init__(field, message)
        self.retry_after = retry_after


def validate(cls: type[J], **fields: Any) -> J:
    """A job of `cls` from its fields (None: left out), or JobRejected naming the field."""
    try:
        return cls.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise JobRejected(*describe_validation_error(exc)) from None


def tenant_job_id(source: str, key: str | None) -> str:
    """The job id for a tenant's key: `<source>@<key>` (a fresh key when none is given)."""
    key = key or uuid.uuid4().hex
    return key if key.startswith(f"{source}@") else f"{source}@{key}"


def owns(source: str, job_id: str) -> bool:
    """Whether `job_id` is in the namespace of tenant `source`."""
    return job_id.startswith(f"{source}@")


class JobRecords:
    """Jobs written to `queue_name` on `redis`, checked against `settings` (bounds, routes,
    webhooks, fair share and source quotas) first.

    `source`: stamped on a job that names none. `tenant`: the source is the tenant's: a job naming
    another is refused, and ids are `<source>@<key>` (a generated one too). `result_ttl_s`: how
    long a job's result is kept (a caller id's digest outlives it by DIGEST_EXTRA_S). `call`: how
    the enqueue script is run (default: on its own)."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        queue_name: str | None = None,
        source: str | None = None,
        tenant: bool = False,
        result_ttl_s: int | None = None,
        call: ScriptCall | None = None,
    ) -> None:
        if tenant and source is None:
            raise ValueError("a tenant's records need its source")
        self.redis = redis
        self.settings = settings
        self.queue_name = queue_name or settings.queue_name
        self.source = source
        self.tenant = tenant
        self.result_ttl_s = result_ttl_s or settings.result_ttl_s
        # worker/lua/records_enqueue.lua, after fair share's part and the wake-up's
        self.enqueue_script = lua.register(redis, "fair_enqueue", "wake", "records_enqueue", **wake.CONSTANTS)
        self._call = call
        self._last_score = 0.0  # the queue score of the last job written here (`_due`)
        self._known = fair.known_sources(settings)  # the sources the settings name

    def job_id(self, job_id: str | None) -> str | None:
        """The id a job is written under: a tenant's in its namespace (never None); else as given."""
        return tenant_job_id(self.source, job_id) if self.tenant and self.source is not None else job_id

    async def write(self, pairs: list[tuple[JobBase, str | None]]) -> list[tuple[str, bool]]:
        """Check every job, then write them all in one round trip (nothing is written if one is
        refused; a conflicting id refuses only its own job): (job id, created) of each, in order.
        With a `job_id` already queued, running or done: not created, a no-op."""
        now_ms = int(time.time() * 1000)
        records = [self._record(job, self.job_id(job_id), now_ms) for job, job_id in pairs]
        bulk_at = await self._bulk_frontier() if any(job.bulk for job, _ in pairs) else 0.0
        calls: list[tuple[list[str], list[bytes | str | int | float]]] = []
        for i, ((job, _), (job_id, data, digest_)) in enumerate(zip(pairs, records, strict=True)):
            # a bulk job waits in the bulk lane (worker.process.lease promotes it when a slot is free),
            # placed from the lane's front: two batches interleave, neither waits for the other
            queue, score, ttl_ms = (
                (bulk_key(self.queue_name), bulk_at + i * self.bulk_stride(job.source), BULK_RECORD_TTL_MS)
                if job.bulk
                else (self.queue_name, self._due(now_ms), JOB_EXPIRES_EXTRA_MS)
            )
            keys = [job_key(job_id), arq_result_key(job_id), result_key(job_id), queue, digest_key(job_id)]
            keys.append(wake_key(self.queue_name))
            args: list[bytes | str | int | float] = [
                data,
                ttl_ms,
                score,
                job_id,
                digest_,
                self.result_ttl_s + DIGEST_EXTRA_S,
            ]
            if self.settings.fair_share and not job.bulk:
                keys += [fair.passes_key(queue), fair.clock_key(queue), fair.seen_key(queue)]
                name = job.source or self.source or fair.DEFAULT_SOURCE
                args += [*self._fair_source(name), fair.waiting_key(queue, ""), self._minute_jobs(name, job)]
            calls.append((keys, args))
        if len(calls) == 1:  # one round trip: a script in a pipeline costs a SCRIPT EXISTS first
            keys, args = calls[0]
            created = [int(await (self._call or _run)(self.enqueue_script, keys, list(args)))]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await self.enqueue_script(keys=keys, args=args, client=pipe)
                created = await pipe.execute()
        over = [(job, -int(c) - 2) for (job, _), c in zip(pairs, created, strict=True) if int(c) <= -2]
        if over:
            raise self._over_quota(*over[0])
        conflicts = [job_id for (job_id, _, _), c in zip(records, created, strict=True) if c == -1]
        if conflicts:
            raise JobConflict(
                "job_id",
                f"{', '.join(conflicts)} already names a different job: pick a new id, "
                "or send the same job again to get its result",
            )
        return [(job_id, c == 1) for (job_id, _, _), c in zip(records, created, strict=True)]

    def record(self, job: JobBase, now_ms: int) -> tuple[dict[str, Any], bytes]:
        """(payload, the arq record) of a job, with the records' source, within the configured
        bounds; JobRejected naming the field if it is not."""
        if job.source is None and self.source is not None:
            job = job.model_copy(update={"source": self.source})
        elif self.tenant and job.source != self.source:
            raise JobRejected("source", f"is set by your token ({self.source}): leave it out")
        try:
            payload = job.model_dump(mode="json", exclude_none=True)
            data = serde.job_bytes(job.kind, payload, now_ms)
        except (SerializationError, ValueError) as exc:
            # orjson: text that is not UTF-8 (a lone surrogate), an int over 64 bits; pydantic (a
            # ValueError) or orjson: nested too deep
            deep = bounds.depth_problem(job, self.settings.max_json_depth)
            if deep:
                raise JobRejected(*deep) from None
            raise JobRejected("job", f"cannot be written as JSON ({exc.__cause__ or exc}): fix that value") from None
        # ROUTES set here: these settings know the workers' routes (else the worker checks the name)
        out_of_bounds = bounds.problem(job, self.settings, len(data), "routes" in self.settings.model_fields_set)
        if out_of_bounds:
            raise JobRejected(*out_of_bounds)
        if job.callback_url is not None and (refused := callbacks.refusal(job.callback_url, self.settings)):
            raise JobRejected("callback_url", refused)
        return payload, data

    def _record(self, job: JobBase, job_id: str | None, now_ms: int) -> tuple[str, bytes, str]:
        """(id, the arq record, digest or '' for a generated id), within the configured bounds."""
        payload, data = self.record(job, now_ms)
        if job_id is None:
            return uuid.uuid4().hex, data, ""
        return checked_job_id(job_id), data, digest(job.kind, payload)

    def _over_quota(self, job: JobBase, waiting: int) -> SourceOverQuota:
        """The refusal of a job whose source is far over its quota: `waiting` jobs wait, more
        than the quota clears in a minute (worker.limits.fair.clears_in_a_minute)."""
        source = job.source or self.source or fair.DEFAULT_SOURCE
        minute = self._minute_jobs(source, job)
        retry_after = max(1, math.ceil((waiting - minute + 1) * 60 / minute))  # until a minute's worth waits
        quota = self.settings.source_limits[source].model_dump(exclude_none=True)
        return SourceOverQuota(
            "source",
            f"{source} has {waiting} jobs waiting, more than its quota {json.dumps(quota)} (SOURCE_LIMITS) clears"
            f" in a minute ({minute:.4g} jobs like this one): retry in {retry_after} s",
            retry_after,
        )

    def _minute_jobs(self, source: str, job: JobBase) -> float:
        """Jobs like `job` that `source`'s quota clears in a minute (0: no quota): more waiting is far over it."""
        limit = self.settings.source_limits.get(source)
        if limit is None:
            return 0.0
        size = fair.job_tokens({"messages": job.build_messages(), **job.request_params()}) if limit.tpm else 0
        return fair.clears_in_a_minute(limit, size)

    def bulk_stride(self, source: str | None) -> float:
        """How far apart a batch's lines (bulk jobs) are placed in the bulk lane, from its front:
        1, or under fair share 1/the weight of their source, so that two batches' lines
        interleave by their sources' weights (worker.limits.fair)."""
        if not self.settings.fair_share:
            return 1.0
        return 1 / fair.weight(self.settings, source or self.source or fair.DEFAULT_SOURCE)

    def _fair_source(self, name: str) -> list[str | int]:
        """The enqueue script's fair-share arguments: the source, whether the settings name it, the bound."""
        return [name, "1" if name in self._known else "0", self.settings.fair_share_max_sources]

    def _due(self, now_ms: int) -> float:
        """A new job's queue score: its due time (now, in ms), and after the previous job's
        written here, by the smallest step a score can take at this size (1/4096 ms until 2039),
        so these records' jobs run in the order they were written even within one millisecond:
        jobs tied on a score would run in the order of their random ids. Past 4,096 jobs in a
        millisecond the next are due that fraction of a millisecond later (see docs/job-format.md)."""
        self._last_score = max(float(now_ms), self._last_score + math.ulp(float(now_ms)))
        return self._last_score

    async def _bulk_frontier(self) -> float:
        """The score at the front of the bulk lane (0 when it is empty)."""
        front = await self.redis.zrange(bulk_key(self.queue_name), 0, 0, withscores=True)
        return float(front[0][1]) if front else 0.0


async def _run(script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
    return await script(keys=keys, args=args)


def checked_job_id(job_id: Any) -> str:
    """A caller's job id, or JobRejected naming `job_id`."""
    try:
        return check_job_id(job_id)
    except ValueError as exc:
        raise JobRejected("job_id", str(exc)) from None


def digest(kind: str, payload: dict[str, Any]) -> str:
    """What makes two jobs the same job: kind and payload (its enqueue time aside)."""
    canonical = json.dumps(
        [kind, {k: v for k, v in payload.items() if k != "enqueued_at"}], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
