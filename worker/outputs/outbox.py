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
from ..lua import registry as lua

Subject = Literal["job", "batch"]
# A delivery's status: waiting for a try (or being tried), sent (a 2xx), or given up.
Status = Literal["pending", "delivered", "failed"]


def delivery_of(subject: Subject, subject_id: str) -> str:
    return f"{subject}:{subject_id}"


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
        self._claim = lua.register(redis, "outbox_claim")
        self._outcome = lua.register(redis, "outbox_outcome")

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
