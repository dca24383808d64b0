"""Results, the call log and spend in Redis (keys: worker.contract.keys).

Spend is recorded per upstream call as soon as the call ends, not per job: a worker killed
after a call and before the job's result still leaves the call counted, and a re-run's
calls have their own ids, so each real call is counted exactly once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from ..lua import registry as lua
from ..outputs.outbox import delivery_of
from .keys import (
    CREDITS,
    DLQ,
    DLQ_INDEX,
    RECENT_JOBS_MAX,
    SPEND_BY,
    SPEND_DAY_TTL_S,
    SPEND_RECORDS,
    SPEND_TOTAL,
    WEBHOOKS,
    calls_key,
    done_channel,
    recent_jobs_key,
    result_key,
    spend_by_key,
    spend_day_key,
    today,
    usage_key,
    webhook_key,
)
from .models import Attempt, JobResult, Usage
from .serde import as_text


class ResultStore:
    def __init__(
        self,
        redis: Redis,
        ttl_s: int,
        dlq_max: int = 10_000,
        dlq_ttl_s: int = 30 * 24 * 3600,
        spend_ttl_s: int = SPEND_DAY_TTL_S,
    ) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.spend_ttl_s = spend_ttl_s
        self.dlq_max = dlq_max
        self.dlq_ttl_s = dlq_ttl_s
        self._record_call = lua.register(redis, "store_record_call")
        # the result, after the outbox's part (its webhook delivery)
        self._save = lua.register(redis, "outbox_queue_delivery", "store_save")

    @property
    def scripts(self) -> list[AsyncScript]:
        """The scripts every job runs here (the call log, the save): preloaded at start-up."""
        return [self._record_call, self._save]

    async def record_call(
        self,
        job_id: str,
        attempt: Attempt,
        credits: float | None,
        usage: Usage | None = None,
        tags: dict[str, str | None] | None = None,
    ) -> bool:
        """One upstream call into the job's call log and, the first time only, into spend and
        usage of its UTC day by model and by each of `tags` given (`source`, `batch`, `route`;
        with a source, also by source and model together). True if it was new."""
        script, keys, args = self.record_call_call(job_id, attempt, credits, usage, tags)
        return bool(await script(keys=keys, args=args))

    def record_call_call(
        self,
        job_id: str,
        attempt: Attempt,
        credits: float | None,
        usage: Usage | None = None,
        tags: dict[str, str | None] | None = None,
    ) -> tuple[AsyncScript, list[str], list[Any]]:
        """The `record_call` script call, to send in one round trip with others (worker.process.scripts)."""
        day, tags = today(), tags or {}
        source = tags.get("source")
        names = [
            attempt.model,
            *(tags.get(by) or "" for by in SPEND_BY[1:]),
            f"{source}|{attempt.model}" if source else "",
        ]
        keys = [calls_key(job_id), SPEND_TOTAL, CREDITS]
        for by in SPEND_RECORDS:
            keys += [spend_by_key(by, day), usage_key(by, day)]
        args = [
            attempt.call_id or "",
            attempt.model_dump_json(exclude_none=True),
            "" if attempt.cost is None else repr(attempt.cost),
            "" if credits is None else repr(credits),
            self.ttl_s,
            self.spend_ttl_s,
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
            *names,
        ]
        return self._record_call, keys, args

    async def attempts(self, job_id: str) -> list[Attempt]:
        """Every call recorded for the job, across all its runs, oldest first."""
        raw = await self.redis.hvals(calls_key(job_id))  # type: ignore[misc]  # redis-py types commands as sync-or-async
        return sorted((Attempt.model_validate_json(r) for r in raw), key=lambda a: (a.at or 0.0, a.run))

    async def save(self, result: JobResult, dead_letter: str | None = None, callback_url: str | None = None) -> int:
        """Store the result (and its dead letter, if it failed; its webhook delivery, if it has a
        callback url) and wake waiters, atomically.
        Returns how many old dead letters were dropped to keep the list within its bounds."""
        script, keys, args = self.save_call(result, dead_letter, callback_url)
        return int(await script(keys=keys, args=args))

    def save_call(
        self, result: JobResult, dead_letter: str | None = None, callback_url: str | None = None
    ) -> tuple[AsyncScript, list[str], list[Any]]:
        """The `save` script call, to send in one round trip with others (worker.process.scripts)."""
        delivery = delivery_of("job", result.job_id)
        keys = [result_key(result.job_id), DLQ, DLQ_INDEX, WEBHOOKS, webhook_key(delivery), recent_jobs_key()]
        if result.source:
            keys.append(recent_jobs_key(result.source))
        args = [
            result.model_dump_json(exclude_none=True),
            self.ttl_s,
            result.status,
            dead_letter or "",
            time.time(),
            self.dlq_max,
            self.dlq_ttl_s,
            result.job_id,
            done_channel(result.job_id),
            callback_url or "",
            delivery,
            RECENT_JOBS_MAX,
            "dead-lettered" if dead_letter else result.status,
            result.model or "",
            "" if result.cost is None else repr(result.cost),
            result.source or "",
        ]
        return self._save, keys, args

    async def get(self, job_id: str) -> JobResult | None:
        raw = await self.redis.get(result_key(job_id))
        return None if raw is None else JobResult.model_validate_json(raw)

    async def wait(self, job_id: str, timeout: float) -> JobResult | None:
        """The result, waiting up to `timeout` seconds for it; None if it did not come."""
        async with self.redis.pubsub() as pubsub:
            # Subscribe before looking, so a result stored in between is not missed.
            await pubsub.subscribe(done_channel(job_id))
            deadline = time.monotonic() + timeout
            while True:
                result = await self.get(job_id)
                remaining = deadline - time.monotonic()
                if result is not None or remaining <= 0:
                    return result
                try:
                    await asyncio.wait_for(_next_message(pubsub), remaining)
                except TimeoutError:
                    return await self.get(job_id)

    async def spend(self, day: str | None = None) -> dict[str, float]:
        """USD by model: all time, or for one UTC day ("YYYY-MM-DD")."""
        raw = await self.redis.hgetall(spend_day_key(day) if day else SPEND_TOTAL)  # type: ignore[misc]  # redis-py types commands as sync-or-async
        return {as_text(k): float(v) for k, v in raw.items()}


async def _next_message(pubsub: PubSub) -> None:
    while await pubsub.get_message(ignore_subscribe_messages=True, timeout=None) is None:
        pass
