"""Queue entries no result can be stored under: an id that is not UTF-8, or outside the job-id
charset (it would name Redis keys and reach logs). Workers move them out of the queue into a
capped list, with the start of the record they pointed at, for the operator
(`llm-router quarantine list`), and count them (`llm_router_quarantined_total`)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from redis.asyncio import Redis

from ..contract.keys import JOB_PREFIX, QUARANTINE
from ..contract.models import JOB_ID
from ..contract.serde import RECORD_KEPT_BYTES
from ..observe import metrics as m

# How much of the record an entry keeps.


def unusable(raw_id: bytes) -> str | None:
    """Why a queue member cannot be a job id (one of metrics.QUARANTINE_REASONS), or None if it can."""
    try:
        text = raw_id.decode()
    except UnicodeDecodeError:
        return "not_utf8"
    return None if JOB_ID.match(text) else "bad_id"


class Quarantine:
    def __init__(self, redis: Redis, queue_name: str, max_entries: int) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self.max_entries = max_entries

    async def add(self, raw_id: bytes, reason: str) -> None:
        """Move one queue member and its record out of the queue into the quarantine."""
        record_key = JOB_PREFIX.encode() + raw_id
        record = await self.redis.get(record_key)
        entry = {
            "id": raw_id.decode("utf-8", "backslashreplace"),
            "id_base64": base64.b64encode(raw_id).decode(),
            "reason": reason,
            "queue": self.queue_name,
            "at": time.time(),
            "record": None if record is None else record[:RECORD_KEPT_BYTES].decode("utf-8", "replace"),
        }
        async with self.redis.pipeline(transaction=True) as tx:
            tx.lpush(QUARANTINE, json.dumps(entry))
            tx.ltrim(QUARANTINE, 0, self.max_entries - 1)
            tx.zrem(self.queue_name, raw_id)
            tx.delete(record_key)
            await tx.execute()
        m.QUARANTINED.labels(reason).inc()

    async def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        return [json.loads(e) for e in await self.redis.lrange(QUARANTINE, 0, limit - 1)]  # type: ignore[misc]  # redis-py types commands as sync-or-async

    async def size(self) -> int:
        return int(await self.redis.llen(QUARANTINE))  # type: ignore[misc]  # redis-py types commands as sync-or-async

    async def purge(self) -> int:
        async with self.redis.pipeline(transaction=True) as tx:
            tx.llen(QUARANTINE)
            tx.delete(QUARANTINE)
            count, _ = await tx.execute()
        return int(count)
