"""The dead-letter list: jobs that failed for good, with their payload and every attempt, so a
person can read why and replay them (`llm-router dlq list | show ID | replay ID|--all | purge`).

Stored next to the results (keys: worker.contract.keys): `llm-router:dlq` (hash id -> JSON DeadLetter)
and `llm-router:dlq:index` (sorted by when). A failed job's result and its dead letter are
written in one transaction. Replay puts the same job id back in the queue, with its
original payload, and drops the failed result so waiters see the new one.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from ..contract import serde
from ..contract.keys import DLQ, DLQ_INDEX, JOB_EXPIRES_EXTRA_MS, job_key, result_key, wake_key
from ..contract.models import Attempt, ErrorInfo, JobResult
from ..lua import registry as lua
from ..process import wake


class DeadLetter(BaseModel):
    job_id: str
    kind: str
    job: Any  # the payload as it was enqueued (it may be what made the job fail)
    truncated_from: int | None = Field(
        None, description="the payload's size in bytes when over DLQ_MAX_PAYLOAD_BYTES: `job` is then its start"
    )
    error: ErrorInfo | None = None
    attempts: list[Attempt] = []
    runs: int = 1
    dead_at: datetime | None = None


def dead_letter(result: JobResult, kind: str, payload: Any, max_payload_bytes: int) -> str:
    """The dead letter of a failed job, as stored: a payload over the limit is kept truncated."""
    letter = DeadLetter(
        job_id=result.job_id,
        kind=kind,
        job=payload,
        error=result.error,
        attempts=result.attempts,
        runs=result.runs,
        dead_at=result.finished_at,
    )
    raw = json.dumps(payload, default=str)
    if len(raw) > max_payload_bytes:
        letter.job, letter.truncated_from = raw[:max_payload_bytes], len(raw)
    return letter.model_dump_json(exclude_none=True)


class DeadLetters:
    def __init__(self, redis: Redis, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name
        # a replayed job wakes an idle worker (worker.process.wake)
        self._replay = lua.register(redis, "wake", "dlq_replay", **wake.CONSTANTS)

    async def size(self) -> int:
        return int(await self.redis.hlen(DLQ))  # type: ignore[misc]  # redis-py types commands as sync-or-async

    async def ids(self, limit: int | None = None) -> list[str]:
        """Newest first."""
        raw = await self.redis.zrevrange(DLQ_INDEX, 0, -1 if limit is None else limit - 1)
        return [r.decode() if isinstance(r, bytes) else r for r in raw]

    async def list(self, limit: int | None = 50) -> list[DeadLetter]:
        ids = await self.ids(limit)
        raw = await self.redis.hmget(DLQ, ids) if ids else []  # type: ignore[misc]  # redis-py types commands as sync-or-async
        return [DeadLetter.model_validate_json(r) for r in raw if r is not None]

    async def get(self, job_id: str) -> DeadLetter | None:
        raw = await self.redis.hget(DLQ, job_id)  # type: ignore[misc]  # redis-py types commands as sync-or-async
        return None if raw is None else DeadLetter.model_validate_json(raw)

    async def replay(self, job_id: str) -> bool:
        """Back to the queue under the same id; False if it is not dead-lettered.

        Raises ValueError if a job with that id is queued or running already."""
        letter = await self.get(job_id)
        if letter is None:
            return False
        if letter.truncated_from is not None:
            raise ValueError(
                f"job {job_id}'s payload was kept truncated ({letter.truncated_from} bytes): it cannot "
                "be replayed; enqueue it again from its producer"
            )
        now_ms = int(time.time() * 1000)
        raw = serde.job_bytes(letter.kind, letter.job, now_ms)
        done = await self._replay(
            keys=[DLQ, DLQ_INDEX, result_key(job_id), job_key(job_id), self.queue_name, wake_key(self.queue_name)],
            args=[job_id, raw, JOB_EXPIRES_EXTRA_MS, now_ms],
        )
        if done == -1:
            raise ValueError(f"job {job_id} is already queued or running")
        return bool(done)

    async def replay_all(self) -> int:
        count = 0
        for job_id in await self.ids():
            try:
                count += await self.replay(job_id)
            except ValueError:
                continue
        return count

    async def purge(self) -> int:
        """Forget every dead letter (the failed results stay until they expire)."""
        async with self.redis.pipeline(transaction=True) as tx:
            tx.hlen(DLQ)
            tx.delete(DLQ, DLQ_INDEX)
            count, _ = await tx.execute()
        return int(count)
