"""Results and spend in Redis. The key layout is part of the contract (see README):

    llm-router:result:<job_id>        JSON JobResult, expires after RESULT_TTL_S
    llm-router:done:<job_id>          pub/sub channel, one message when the result is stored
    llm-router:spend:total            hash model -> USD spent, all time
    llm-router:spend:day:<YYYY-MM-DD> hash model -> USD spent that UTC day (kept 400 days)
    llm-router:credits                hash remaining (USD), updated_at (UNIX time)
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

from redis.asyncio import Redis

from .models import JobResult

PREFIX = "llm-router:"
RESULT_PREFIX = PREFIX + "result:"
DONE_PREFIX = PREFIX + "done:"
SPEND_TOTAL = PREFIX + "spend:total"
SPEND_DAY_PREFIX = PREFIX + "spend:day:"
CREDITS = PREFIX + "credits"
SPEND_DAY_TTL_S = 400 * 24 * 3600


def result_key(job_id: str) -> str:
    return RESULT_PREFIX + job_id


def spend_day_key(day: str | None = None) -> str:
    return SPEND_DAY_PREFIX + (day or datetime.now(timezone.utc).strftime("%Y-%m-%d"))


def spend_by_model(result: JobResult) -> dict[str, float]:
    """What this result cost, per model that billed (a compare job bills several)."""
    spend: dict[str, float] = {}
    for answer in result.answers or []:
        if answer.cost:
            spend[answer.model] = spend.get(answer.model, 0.0) + answer.cost
    if not result.answers and result.cost and result.model:
        spend[result.model] = result.cost
    return spend


class ResultStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def save(self, result: JobResult) -> None:
        """Store the result, add its cost to the totals and wake waiters: one round trip, atomic."""
        day = spend_day_key()
        async with self.redis.pipeline(transaction=True) as tx:
            tx.set(result_key(result.job_id), result.model_dump_json(exclude_none=True), ex=self.ttl_s)
            for model, cost in spend_by_model(result).items():
                tx.hincrbyfloat(SPEND_TOTAL, model, cost)
                tx.hincrbyfloat(day, model, cost)
            tx.expire(day, SPEND_DAY_TTL_S)
            credits = _last_credits(result)
            if credits is not None:
                tx.hset(CREDITS, mapping={"remaining": credits, "updated_at": time.time()})
            tx.publish(DONE_PREFIX + result.job_id, result.status)
            await tx.execute()

    async def get(self, job_id: str) -> JobResult | None:
        raw = await self.redis.get(result_key(job_id))
        return None if raw is None else JobResult.model_validate_json(raw)

    async def wait(self, job_id: str, timeout: float) -> JobResult | None:
        """The result, waiting up to `timeout` seconds for it; None if it did not come."""
        async with self.redis.pubsub() as pubsub:
            # Subscribe before looking, so a result stored in between is not missed.
            await pubsub.subscribe(DONE_PREFIX + job_id)
            deadline = time.monotonic() + timeout
            while True:
                result = await self.get(job_id)
                remaining = deadline - time.monotonic()
                if result is not None or remaining <= 0:
                    return result
                try:
                    await asyncio.wait_for(_next_message(pubsub), remaining)
                except asyncio.TimeoutError:
                    return await self.get(job_id)

    async def spend(self, day: str | None = None) -> dict[str, float]:
        """USD by model: all time, or for one UTC day ("YYYY-MM-DD")."""
        raw = await self.redis.hgetall(spend_day_key(day) if day else SPEND_TOTAL)
        return {_text(k): float(v) for k, v in raw.items()}


async def _next_message(pubsub) -> None:  # type: ignore[no-untyped-def]
    while await pubsub.get_message(ignore_subscribe_messages=True, timeout=None) is None:
        pass


def _last_credits(result: JobResult) -> float | None:
    values = [a.credits_remaining for a in result.answers or [] if a.credits_remaining is not None]
    return min(values) if values else result.credits_remaining


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
