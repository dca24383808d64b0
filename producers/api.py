"""The Python API for services that hand LLM work to llm-router.

    async with Producer("redis://localhost:6379/0", source="billing") as producer:
        job_id = await producer.chat("gpt-4.1", message="Hello")
        result = await producer.wait(job_id, timeout=60)
        print(result.content, result.cost)

Jobs are validated here, before anything reaches Redis, and written in arq's job format
(JSON, see worker.serde), so arq workers run them and any language can read them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from arq.jobs import SerializationError
from pydantic import ValidationError
from redis.asyncio import Redis

from worker import bounds, fair, outbox, serde, wake, webhooks
from worker.connections import async_redis
from worker.dlq import DeadLetters
from worker.keys import JOB_EXPIRES_EXTRA_MS, arq_result_key, bulk_key, digest_key, job_key, result_key, wake_key
from worker.lease import workers_alive
from worker.models import (
    ChatJob,
    CompareJob,
    JobBase,
    JobResult,
    Message,
    VisionJob,
    check_job_id,
    describe_validation_error,
)
from worker.outbox import Delivery
from worker.settings import Settings, load_settings
from worker.store import ResultStore

from .images import ImageError, resolve_image

if TYPE_CHECKING:
    from .batches import Batches

J = TypeVar("J", bound=JobBase)

# arq's enqueue_job checks "not queued, not running, no arq result" with WATCH and three
# round trips. arq keeps no result of ours (keep_result=0), so the id must also be absent
# from our result keys for a repeated id to be a no-op: one atomic script, one round trip.
# A caller's own id also keeps the digest of its job: the same id with another job is a
# conflict (-1), not a silent no-op. With fair share (FAIR_SHARE, worker.fair) an interactive
# job waits in its source's sub-queue instead of the queue.
# A source with a quota (SOURCE_LIMITS) that has more jobs waiting than the quota clears in a
# minute (worker.fair.clears_in_a_minute) is "far over" it: the job is refused, nothing written,
# answering -2 - (jobs waiting).
# A created job wakes one idle worker (worker.wake).
# KEYS: job record, arq result, our result, queue, digest, wake list[, fair share: passes, clock, seen]
# ARGV: record, record TTL ms, score, job id, digest ('' for a generated id), digest TTL s
#       [, fair share: source, known ('1'/'0'), sources bound, sub-queue prefix, jobs its quota clears
#       in a minute or 0]
_ENQUEUE = (
    fair.ENQUEUE_FUNCTION
    + wake.WAKE_FUNCTION
    + """
if redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3]) > 0 then
  if ARGV[5] ~= '' then
    local known = redis.call('GET', KEYS[5])
    if known and known ~= ARGV[5] then return -1 end
  end
  return 0
end
if ARGV[11] and tonumber(ARGV[11]) > 0 then
  local waiting = redis.call('ZCARD', ARGV[10] .. ARGV[7])
  if waiting >= tonumber(ARGV[11]) then return -2 - waiting end
end
redis.call('PSETEX', KEYS[1], ARGV[2], ARGV[1])
if ARGV[7] then
  fair_enqueue(KEYS[7], KEYS[8], KEYS[9], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[3], ARGV[4])
else
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
end
wake(KEYS[6])
if ARGV[5] ~= '' then redis.call('SET', KEYS[5], ARGV[5], 'EX', ARGV[6]) end
return 1
"""
)
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
    jobs wait than the quota clears in a minute (worker.fair.clears_in_a_minute). Nothing was
    enqueued; `retry_after` is the seconds until it would be accepted again (at the quota's pace)."""

    def __init__(self, field: str, message: str, retry_after: int) -> None:
        super().__init__(field, message)
        self.retry_after = retry_after


class ResultTimeout(TimeoutError):
    """No result within the wait; the job may still finish later."""


def build_messages(
    message: str | None = None, messages: Iterable[dict[str, Any] | Message] | None = None, system: str | None = None
) -> list[dict[str, Any] | Message]:
    """The seed's three ways to say it: one message, a system prompt, or a whole conversation."""
    built: list[dict[str, Any] | Message] = [{"role": "system", "content": system}] if system else []
    built += list(messages or [])
    if message is not None:
        built.append({"role": "user", "content": message})
    return built


def validate(cls: type[J], **fields: Any) -> J:
    try:
        return cls.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise JobRejected(*describe_validation_error(exc)) from None


class Producer:
    def __init__(
        self,
        redis_url: str | None = None,
        *,
        source: str | None = None,
        queue_name: str | None = None,
        result_ttl_s: int | None = None,
        max_image_bytes: int | None = None,
        redis: Redis | None = None,
    ) -> None:
        settings = self.settings = load_settings()  # defaults from the environment; a bad value is a ConfigError
        self.redis = redis or async_redis(redis_url or settings.redis_url)
        self._owns_redis = redis is None
        self.source = source
        self.queue_name = queue_name or settings.queue_name
        self.max_image_bytes = max_image_bytes or settings.max_image_bytes
        self.store = ResultStore(self.redis, result_ttl_s or settings.result_ttl_s)
        self._enqueue = self.redis.register_script(_ENQUEUE)
        self._last_score = 0.0  # the queue score of this producer's last job (`_due`)
        self.dead_letters = DeadLetters(self.redis, self.queue_name)
        self._known: tuple[Settings, frozenset[str]] | None = None  # (settings, its named sources)

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_redis:
            await self.redis.aclose()

    # ------------------------------------------------------------ enqueue

    async def chat(
        self,
        model: str,
        message: str | None = None,
        *,
        messages: Iterable[Any] | None = None,
        system: str | None = None,
        job_id: str | None = None,
        **params: Any,
    ) -> str:
        return await self._submit(
            ChatJob, job_id, model=model, messages=build_messages(message, messages, system), **params
        )

    async def vision(
        self,
        model: str,
        image: str,
        prompt: str,
        *,
        system: str | None = None,
        job_id: str | None = None,
        **params: Any,
    ) -> str:
        """`image`: an http(s) URL, a data URL, or a local file path (sent as base64)."""
        try:
            image = resolve_image(image, self.max_image_bytes)
        except ImageError as exc:
            raise JobRejected("image", str(exc).removeprefix("image: ")) from None
        return await self._submit(VisionJob, job_id, model=model, image=image, prompt=prompt, system=system, **params)

    async def compare(
        self,
        models: Iterable[str],
        message: str | None = None,
        *,
        messages: Iterable[Any] | None = None,
        system: str | None = None,
        job_id: str | None = None,
        **params: Any,
    ) -> str:
        return await self._submit(
            CompareJob, job_id, models=list(models), messages=build_messages(message, messages, system), **params
        )

    async def _submit(self, cls: type[JobBase], job_id: str | None, **fields: Any) -> str:
        """Validate a job of `cls` from the verbs' arguments (this producer's source by default) and enqueue it."""
        return await self.enqueue(validate(cls, **{"source": self.source, **fields}), job_id)

    async def enqueue(self, job: JobBase, job_id: str | None = None) -> str:
        """Enqueue a validated job of any kind. With a `job_id` already queued, running or done: a no-op."""
        [(job_id, _created)] = await self._write([(job, job_id)])
        return job_id

    async def enqueue_many(self, jobs: Iterable[JobBase | tuple[JobBase, str | None]]) -> list[str]:
        """Many jobs in one round trip (bulk generation). Returns their ids, in order."""
        pairs = [j if isinstance(j, tuple) else (j, None) for j in jobs]
        return [job_id for job_id, _ in await self._write(pairs)]

    async def _write(self, pairs: list[tuple[JobBase, str | None]]) -> list[tuple[str, bool]]:
        """Check every job, then write them all in one round trip (nothing is written if one is
        refused; a conflicting id refuses only its own job)."""
        now_ms = int(time.time() * 1000)
        records = [self._record(job, job_id, now_ms) for job, job_id in pairs]
        bulk_at = await self._bulk_frontier() if any(job.bulk for job, _ in pairs) else 0.0
        calls: list[tuple[list[str], list[bytes | str | int | float]]] = []
        for i, ((job, _), (job_id, data, digest)) in enumerate(zip(pairs, records, strict=True)):
            # a bulk job waits in the bulk lane (worker.lease promotes it when a slot is free),
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
                digest,
                self.store.ttl_s + DIGEST_EXTRA_S,
            ]
            if self.settings.fair_share and not job.bulk:
                keys += [fair.passes_key(queue), fair.clock_key(queue), fair.seen_key(queue)]
                name = job.source or self.source or fair.DEFAULT_SOURCE
                args += [*self._fair_source(name), fair.waiting_key(queue, ""), self._minute_jobs(name, job)]
            calls.append((keys, args))
        if len(calls) == 1:  # one round trip: a script in a pipeline costs a SCRIPT EXISTS first
            created = [await self._enqueue_one(*calls[0])]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await self._enqueue(keys=keys, args=args, client=pipe)
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

    def _over_quota(self, job: JobBase, waiting: int) -> SourceOverQuota:
        """The refusal of a job whose source is far over its quota: `waiting` jobs wait, more
        than the quota clears in a minute (worker.fair.clears_in_a_minute)."""
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
        interleave by their sources' weights (worker.fair)."""
        if not self.settings.fair_share:
            return 1.0
        return 1 / fair.weight(self.settings, source or self.source or fair.DEFAULT_SOURCE)

    def _fair_source(self, name: str) -> list[str | int]:
        """The enqueue script's fair-share arguments: the source, whether the settings name it, the bound."""
        if self._known is None or self._known[0] is not self.settings:  # the settings may be replaced
            self._known = (self.settings, fair.known_sources(self.settings))
        return [name, "1" if name in self._known[1] else "0", self.settings.fair_share_max_sources]

    def _due(self, now_ms: int) -> float:
        """A new job's queue score: its due time (now, in ms), and after this producer's previous
        job's, by the smallest step a score can take at this size (1/4096 ms until 2039), so the
        producer's jobs run in the order it enqueued them even within one millisecond: jobs tied
        on a score would run in the order of their random ids. Past 4,096 jobs in a millisecond
        the next are due that fraction of a millisecond later (see docs/job-format.md)."""
        self._last_score = max(float(now_ms), self._last_score + math.ulp(float(now_ms)))
        return self._last_score

    async def _enqueue_one(self, keys: list[str], args: list[bytes | str | int | float]) -> int:
        """One job's enqueue script (the ingress sends concurrent requests' together: producers.coalesce)."""
        return int(await self._enqueue(keys=keys, args=args))

    async def _bulk_frontier(self) -> float:
        """The score at the front of the bulk lane (0 when it is empty)."""
        front = await self.redis.zrange(bulk_key(self.queue_name), 0, 0, withscores=True)
        return float(front[0][1]) if front else 0.0

    def _record(self, job: JobBase, job_id: str | None, now_ms: int) -> tuple[str, bytes, str]:
        """(id, the arq record, digest or '' for a generated id), within the configured bounds."""
        payload, data = self._record_bytes(job, now_ms)
        if job_id is None:
            return uuid.uuid4().hex, data, ""
        return _job_id(job_id), data, digest(job.kind, payload)

    def _record_bytes(self, job: JobBase, now_ms: int) -> tuple[dict[str, Any], bytes]:
        """(payload, the arq record) of a job, with the producer's source, within the configured bounds."""
        if job.source is None and self.source is not None:
            job = job.model_copy(update={"source": self.source})
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
        # ROUTES set here: this producer knows the workers' routes (else the worker checks the name)
        out_of_bounds = bounds.problem(job, self.settings, len(data), "routes" in self.settings.model_fields_set)
        if out_of_bounds:
            raise JobRejected(*out_of_bounds)
        if job.callback_url is not None and (refused := webhooks.refusal(job.callback_url, self.settings)):
            raise JobRejected("callback_url", refused)
        return payload, data

    # ------------------------------------------------------------ results

    async def result(self, job_id: str) -> JobResult | None:
        """The stored result, or None while the job is queued or running (or unknown)."""
        return await self.store.get(job_id)

    async def wait(self, job_id: str, timeout: float = 60.0) -> JobResult:
        result = await self.store.wait(job_id, timeout)
        if result is None:
            raise ResultTimeout(f"no result for job {job_id} within {timeout:g}s (it may still finish)")
        return result

    async def webhook(self, job_id: str) -> Delivery | None:
        """The job's webhook delivery (`callback_url`): status, tries, last error; None if it has none (yet)."""
        return await outbox.status(self.redis, "job", job_id)

    @property
    def batches(self) -> Batches:
        """Batches in OpenAI's Batch format: submit a JSONL file, follow it, read its results."""
        from .batches import Batches

        return Batches(self)

    async def queued(self) -> int:
        """Jobs in the queue (waiting, deferred or running), in the sources' sub-queues (fair
        share) and in its bulk lane."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.queue_name)
            pipe.zcard(bulk_key(self.queue_name))
            pipe.zcard(fair.passes_key(self.queue_name))
            queue, bulk, sources = await pipe.execute()
        waiting = 0
        if sources:  # jobs wait in sub-queues (sent before FAIR_SHARE was turned off, too)
            waiting = sum(d.waiting for d in await fair.FairQueue(self.redis, self.settings, self.queue_name).depths(0))
        return int(queue) + int(bulk) + waiting

    async def workers(self) -> int:
        """Workers consuming this queue now (by their heartbeat)."""
        return await workers_alive(self.redis, self.queue_name)


def _job_id(job_id: Any) -> str:
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
