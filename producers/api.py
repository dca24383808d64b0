"""The Python API for services that hand LLM work to llm-router.

    async with Producer("redis://localhost:6379/0", source="billing") as producer:
        job_id = await producer.chat("gpt-4.1", message="Hello")
        result = await producer.wait(job_id, timeout=60)
        print(result.content, result.cost)

Jobs are validated here, before anything reaches Redis, and written in arq's job format
(JSON, see worker.serde), so arq workers run them and any language can read them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import ValidationError
from redis.asyncio import Redis

from worker import serde
from worker.dlq import DeadLetters
from worker.keys import JOB_EXPIRES_EXTRA_MS, arq_result_key, job_key, result_key
from worker.lease import workers_alive
from worker.models import ChatJob, CompareJob, JobBase, JobResult, Message, VisionJob, describe_validation_error
from worker.settings import load_settings
from worker.store import ResultStore

from .images import ImageError, resolve_image

J = TypeVar("J", bound=JobBase)

# arq's enqueue_job checks "not queued, not running, no arq result" with WATCH and three
# round trips. arq keeps no result of ours (keep_result=0), so the id must also be absent
# from our result keys for a repeated id to be a no-op: one atomic script, one round trip.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
return 1
"""


class JobRejected(ValueError):
    """A job failed validation; nothing was enqueued. `field` names the problem."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


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
        settings = load_settings()  # defaults from the environment; a bad value is a ConfigError
        self.redis = redis or Redis.from_url(redis_url or settings.redis_url)
        self._owns_redis = redis is None
        self.source = source
        self.queue_name = queue_name or settings.queue_name
        self.max_image_bytes = max_image_bytes or settings.max_image_bytes
        self.store = ResultStore(self.redis, result_ttl_s or settings.result_ttl_s)
        self._enqueue = self.redis.register_script(_ENQUEUE)
        self.dead_letters = DeadLetters(self.redis, self.queue_name)

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
        job = validate(
            ChatJob,
            model=model,
            messages=build_messages(message, messages, system),
            source=params.pop("source", self.source),
            **params,
        )
        return await self.enqueue(job, job_id)

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
        job = validate(
            VisionJob,
            model=model,
            image=image,
            prompt=prompt,
            system=system,
            source=params.pop("source", self.source),
            **params,
        )
        return await self.enqueue(job, job_id)

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
        job = validate(
            CompareJob,
            models=list(models),
            messages=build_messages(message, messages, system),
            source=params.pop("source", self.source),
            **params,
        )
        return await self.enqueue(job, job_id)

    async def enqueue(self, job: JobBase, job_id: str | None = None) -> str:
        """Enqueue a validated job of any kind. With a `job_id` already queued, running or done: a no-op."""
        [(job_id, _created)] = await self._write([(job, job_id)])
        return job_id

    async def enqueue_many(self, jobs: Iterable[JobBase | tuple[JobBase, str | None]]) -> list[str]:
        """Many jobs in one round trip (bulk generation). Returns their ids, in order."""
        pairs = [j if isinstance(j, tuple) else (j, None) for j in jobs]
        return [job_id for job_id, _ in await self._write(pairs)]

    async def _write(self, pairs: list[tuple[JobBase, str | None]]) -> list[tuple[str, bool]]:
        now_ms = int(time.time() * 1000)
        ids = [_job_id(job_id) for _, job_id in pairs]
        async with self.redis.pipeline(transaction=False) as pipe:
            for (job, _), job_id in zip(pairs, ids, strict=True):
                if job.source is None and self.source is not None:
                    job = job.model_copy(update={"source": self.source})
                payload = job.model_dump(mode="json", exclude_none=True)
                data = serde.job_bytes(job.kind, payload, now_ms)
                await self._enqueue(
                    keys=[job_key(job_id), arq_result_key(job_id), result_key(job_id), self.queue_name],
                    args=[data, JOB_EXPIRES_EXTRA_MS, now_ms, job_id],
                    client=pipe,
                )
            created = await pipe.execute()
        return [(job_id, bool(c)) for job_id, c in zip(ids, created, strict=True)]

    # ------------------------------------------------------------ results

    async def result(self, job_id: str) -> JobResult | None:
        """The stored result, or None while the job is queued or running (or unknown)."""
        return await self.store.get(job_id)

    async def wait(self, job_id: str, timeout: float = 60.0) -> JobResult:
        result = await self.store.wait(job_id, timeout)
        if result is None:
            raise ResultTimeout(f"no result for job {job_id} within {timeout:g}s (it may still finish)")
        return result

    async def queued(self) -> int:
        """Jobs waiting in the queue (not yet picked up)."""
        return await self.redis.zcard(self.queue_name)

    async def workers(self) -> int:
        """Workers consuming this queue now (by their heartbeat)."""
        return await workers_alive(self.redis, self.queue_name)


def _job_id(job_id: Any) -> str:
    if job_id is None:
        return uuid.uuid4().hex
    if not isinstance(job_id, str) or not job_id:
        raise JobRejected("job_id", f"must be a non-empty string, not {job_id!r}")
    return job_id
