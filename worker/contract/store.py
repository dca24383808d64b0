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

from ..outputs.outbox import QUEUE_LUA, delivery_of
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

# The call, its spend and usage per day by model, source, batch and route (and by source and
# model together), and the credits, in one script: only the first write of a call id counts, so
# each real call is counted exactly once.
# KEYS: calls hash, spend total, credits, then per dimension of SPEND_RECORDS its spend-day and usage-day keys
# ARGV: call id, attempt JSON, cost ('' unknown), credits remaining ('' unknown), calls TTL s, day TTL s,
#       prompt tokens, completion tokens, then per dimension its name ('' none: not counted by it)
_RECORD_CALL = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[5])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], 'remaining', ARGV[4], 'updated_at', redis.call('TIME')[1])
end
for i = 0, (#KEYS - 3) / 2 - 1 do
  local name, spend, usage = ARGV[9 + i], KEYS[4 + 2 * i], KEYS[5 + 2 * i]
  if name ~= '' then
    -- a day's hash gets its expiry with its first field (a field's first increment): fewer writes per call
    if ARGV[3] ~= '' then
      if i == 0 then redis.call('HINCRBYFLOAT', KEYS[2], name, ARGV[3]) end
      if tonumber(redis.call('HINCRBYFLOAT', spend, name, ARGV[3])) == tonumber(ARGV[3]) then
        redis.call('EXPIRE', spend, ARGV[6])
      end
    end
    if redis.call('HINCRBY', usage, 'calls|' .. name, 1) == 1 then redis.call('EXPIRE', usage, ARGV[6]) end
    if ARGV[7] ~= '0' then redis.call('HINCRBY', usage, 'prompt|' .. name, ARGV[7]) end
    if ARGV[8] ~= '0' then redis.call('HINCRBY', usage, 'completion|' .. name, ARGV[8]) end
  end
end
return 1
"""


# The result, its dead letter if any, the dead-letter list kept within its bounds (oldest
# first: past DLQ_TTL_S, then over DLQ_MAX; at most 100 a call), its webhook delivery if it has
# a callback_url (worker.outputs.outbox), the job in the recent-jobs streams (every source's, and its
# source's if it has one: XADD with MAXLEN ~ and EXPIRE, in this script, so no command or round
# trip of its own), and the wake-up: one round trip.
# KEYS: result, dlq hash, dlq index, webhook outbox, webhook delivery, then the recent-jobs streams
# ARGV: result JSON, result TTL s, status, dead letter JSON ('' none), now s, dlq max, dlq TTL s, job id, channel,
#       callback url ('' none), delivery, recent-jobs max, listed status, model, cost, source
_SAVE = (
    QUEUE_LUA
    + """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[10] ~= '' then queue_delivery(KEYS[4], KEYS[5], ARGV[11], ARGV[10], ARGV[5], ARGV[2]) end
local dropped = {}
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[8], ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[8])
  dropped = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[5]) - tonumber(ARGV[7]), 'LIMIT', 0, 100)
  local over = redis.call('ZCARD', KEYS[3]) - #dropped - tonumber(ARGV[6])
  if over > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[3], #dropped, #dropped + math.min(over, 100) - 1)) do
      table.insert(dropped, id)
    end
  end
  for _, id in ipairs(dropped) do
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
  end
end
for i = 6, #KEYS do
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[12], '*',
    'id', ARGV[8], 'status', ARGV[13], 'model', ARGV[14], 'cost', ARGV[15], 'source', ARGV[16])
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
redis.call('PUBLISH', ARGV[9], ARGV[3])
return #dropped
"""
)


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
        self._record_call = redis.register_script(_RECORD_CALL)
        self._save = redis.register_script(_SAVE)

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
