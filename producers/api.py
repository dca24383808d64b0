"""The Python API for services that hand LLM work to llm-router.

    async with Producer("redis://localhost:6379/0", source="billing") as producer:
        job_id = await producer.chat("gpt-4.1", message="Hello")
        result = await producer.wait(job_id, timeout=60)
        print(result.content, result.cost)

Jobs are validated here, before anything reaches Redis, and written in arq's job format
(JSON, see worker.contract.serde), so arq workers run them and any language can read them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from worker.contract.connections import async_redis
from worker.contract.keys import bulk_key
from worker.contract.models import ChatJob, CompareJob, JobBase, JobResult, Message, VisionJob
from worker.contract.records import (
    BULK_RECORD_TTL_MS,
    DIGEST_EXTRA_S,
    JobConflict,
    JobRecords,
    JobRejected,
    ScriptCall,
    SourceOverQuota,
    digest,
    validate,
)
from worker.contract.settings import Settings, load_settings
from worker.contract.store import ResultStore
from worker.limits import fair
from worker.outputs import outbox
from worker.outputs.dlq import DeadLetters
from worker.outputs.outbox import Delivery
from worker.process.lease import workers_alive

from .images import ImageError, resolve_image

if TYPE_CHECKING:
    from .batches import Batches

__all__ = [
    "BULK_RECORD_TTL_MS",
    "DIGEST_EXTRA_S",
    "JobConflict",
    "JobRejected",
    "Producer",
    "ResultTimeout",
    "SourceOverQuota",
    "build_messages",
    "digest",
    "validate",
]


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


class Producer:
    """Jobs and batches onto the queue, results read back.

    `settings`: the settings to work by (bounds, routes, fair share, batch and webhook limits);
    read from the environment when not given (a bad value is a ConfigError), once, here. The
    arguments after it override theirs: `redis_url`, `queue_name`, `result_ttl_s`,
    `max_image_bytes`. `source`: stamped on each job that names none. `tenant`: the producer acts
    for that source alone (the ingress's bearer token): a job naming another source is refused,
    and job ids are `<source>@<key>` (worker.contract.records). `redis`, `store`, `call`: shared objects
    to use instead of this producer's own (the ingress's connection pool, result store, and
    script batching)."""

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        source: str | None = None,
        tenant: bool = False,
        settings: Settings | None = None,
        queue_name: str | None = None,
        result_ttl_s: int | None = None,
        max_image_bytes: int | None = None,
        redis: Redis | None = None,
        store: ResultStore | None = None,
        call: ScriptCall | None = None,
    ) -> None:
        settings = settings or load_settings()
        self.redis = redis or async_redis(redis_url or settings.redis_url)
        self._owns_redis = redis is None
        self.max_image_bytes = max_image_bytes or settings.max_image_bytes
        self.store = store or ResultStore(self.redis, result_ttl_s or settings.result_ttl_s)
        self.records = JobRecords(
            self.redis,
            settings,
            queue_name=queue_name,
            source=source,
            tenant=tenant,
            result_ttl_s=self.store.ttl_s,
            call=call,
        )
        self.dead_letters = DeadLetters(self.redis, self.queue_name)

    @property
    def settings(self) -> Settings:
        """The settings this producer works by (given, or read once from the environment)."""
        return self.records.settings

    @property
    def source(self) -> str | None:
        return self.records.source

    @property
    def queue_name(self) -> str:
        return self.records.queue_name

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
        [(job_id, _created)] = await self.records.write([(job, job_id)])
        return job_id

    async def submit(self, job: JobBase, job_id: str | None = None) -> tuple[str, bool]:
        """`enqueue`, also saying whether this call created the job (False: the id already named
        the same job; JobConflict if another): (the job id, created)."""
        [(job_id, created)] = await self.records.write([(job, job_id)])
        return job_id, created

    async def enqueue_many(self, jobs: Iterable[JobBase | tuple[JobBase, str | None]]) -> list[str]:
        """Many jobs in one round trip (bulk generation). Returns their ids, in order."""
        pairs = [j if isinstance(j, tuple) else (j, None) for j in jobs]
        return [job_id for job_id, _ in await self.records.write(pairs)]

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
        from .batches import Batches  # here: `llm-router chat` need not import the batch store (~0.2 s)

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
