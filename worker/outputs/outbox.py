"""The webhook outbox: deliveries waiting to be sent, durable in Redis (worker.outputs.webhooks sends them).

A delivery is queued by the same Lua script that stores what it reports (worker.contract.store's result
script for a job, worker.batches.record' line script for the batch its last line ends), so a worker
killed in between cannot store a result and lose its webhook. It names its subject only: the
record sent is read when it is sent (the result, or the batch's record), never copied here.

    llm-router:webhooks                  sorted set: delivery -> when it is due (UNIX s)
    llm-router:webhook:<delivery>        hash: url, n, status, tries, created_at, last_error, ...

A delivery is `job:<job_id>` or `batch:<batch_id>`. A sender claims due deliveries by pushing
them a lease ahead in the set (a sender killed mid-try leaves them due again), then writes the
try's outcome fenced by `n`, the delivery's generation: a replayed job's new result starts a
new generation (a new delivery id, `<delivery>#<n>`) once the last one ended.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from ..contract.keys import WEBHOOKS, webhook_key

Subject = Literal["job", "batch"]
# A delivery's status: waiting for a try (or being tried), sent (a 2xx), or given up.
Status = Literal["pending", "delivered", "failed"]


def delivery_of(subject: Subject, subject_id: str) -> str:
    return f"{subject}:{subject_id}"


# Defines queue_delivery(outbox, delivery key, delivery, url, now s, ttl s): prepended to the
# scripts that store a result or end a batch. A pending delivery gets the url (it will send the
# newest record); an ended one (or none) starts its next generation, due now.
QUEUE_LUA = """
local function queue_delivery(outbox, key, delivery, url, now, ttl)
  if redis.call('HGET', key, 'status') ~= 'pending' then
    redis.call('HINCRBY', key, 'n', 1)
    redis.call('HDEL', key, 'last_error', 'last_status', 'last_try_at', 'next_try_at', 'ended_at')
    redis.call('HSET', key, 'status', 'pending', 'tries', 0, 'created_at', now)
    redis.call('ZADD', outbox, now, delivery)
  end
  redis.call('HSET', key, 'url', url)
  redis.call('EXPIRE', key, math.max(math.floor(tonumber(ttl)), 60))
end
"""

# Claim the due deliveries (at most ARGV[3]): each is pushed ARGV[2] s ahead, so only a sender
# that dies before writing its outcome leaves it to be tried again.
# KEYS: outbox; ARGV: now s, lease s, most
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, d in ipairs(due) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), d) end
return due
"""

# A try's outcome, if the delivery is still generation ARGV[2]: 'retry' (due again at ARGV[4]),
# 'delivered' or 'failed' (out of the outbox). Returns the tries so far, 0 if fenced off.
# KEYS: outbox, delivery; ARGV: delivery, n, outcome, due s, last error, last status, now s
_OUTCOME = """
if redis.call('HGET', KEYS[2], 'n') ~= ARGV[2] then return 0 end
local tries = redis.call('HINCRBY', KEYS[2], 'tries', 1)
redis.call('HSET', KEYS[2], 'last_try_at', ARGV[7])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'last_error', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'last_status', ARGV[6]) end
if ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[2], 'next_try_at', ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
else
  redis.call('HSET', KEYS[2], 'status', ARGV[3], 'ended_at', ARGV[7])
  redis.call('HDEL', KEYS[2], 'next_try_at')
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return tries
"""


class Delivery(BaseModel):
    """A delivery as stored: what `GET /v1/jobs/{id}` shows as `webhook`."""

    id: str = Field(description="`<delivery>#<n>`: the LLM-Router-Delivery header; the same on every try")
    url: str
    status: Status
    tries: int = 0
    last_error: str | None = None
    last_status: int | None = Field(None, description="the receiver's last HTTP status")
    created_at: float
    last_try_at: float | None = None
    next_try_at: float | None = None
    ended_at: float | None = None

    @classmethod
    def from_hash(cls, delivery: str, raw: dict[bytes, bytes]) -> Delivery:
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            id=f"{delivery}#{f.get('n', '1')}",
            url=f.get("url", ""),
            status=f.get("status", "pending"),
            tries=int(f.get("tries", 0)),
            last_error=f.get("last_error"),
            last_status=int(f["last_status"]) if f.get("last_status") else None,
            created_at=float(f.get("created_at", 0)),
            **{k: float(f[k]) for k in ("last_try_at", "next_try_at", "ended_at") if f.get(k)},
        )


class Outbox:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._outcome = redis.register_script(_OUTCOME)

    async def claim(self, now: float, lease_s: float, most: int) -> list[str]:
        due = await self._claim(keys=[WEBHOOKS], args=[now, lease_s, most])
        return [d.decode() for d in due]

    async def read(self, delivery: str) -> dict[str, str] | None:
        raw = await self.redis.hgetall(webhook_key(delivery))  # type: ignore[misc]  # redis-py types commands as sync-or-async
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    async def release(self, delivery: str, now: float) -> None:
        """A claimed delivery whose try was cut (the worker stops): due again at `now`."""
        await self.redis.zadd(WEBHOOKS, {delivery: now}, xx=True)

    async def drop(self, delivery: str) -> None:
        """Out of the outbox: its record is gone (expired), or it is no longer pending."""
        await self.redis.zrem(WEBHOOKS, delivery)

    async def outcome(
        self,
        delivery: str,
        n: str,
        outcome: str,
        now: float,
        due: float = 0,
        error: str = "",
        status: int | None = None,
    ) -> int:
        return int(
            await self._outcome(
                keys=[WEBHOOKS, webhook_key(delivery)],
                args=[delivery, n, outcome, due, error, "" if status is None else status, now],
            )
        )

    async def next_due(self) -> float | None:
        first = await self.redis.zrange(WEBHOOKS, 0, 0, withscores=True)
        return float(first[0][1]) if first else None


async def status(redis: Redis, subject: Subject, subject_id: str) -> Delivery | None:
    """The webhook delivery of a job or batch, or None if it has none."""
    delivery = delivery_of(subject, subject_id)
    raw = await redis.hgetall(webhook_key(delivery))  # type: ignore[misc]
    return Delivery.from_hash(delivery, raw) if raw else None
