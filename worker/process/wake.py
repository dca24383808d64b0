"""Waking idle workers: a job that arrives to an idle worker starts at once, with no busy polling.

Whatever makes a job due now (the enqueue script into the queue, the bulk lane or a source's
sub-queue; a batch's release; a requeue; a dead letter replayed) also pushes a token on the
queue's wake list (`llm-router:wake:<queue>`), trimmed to one token. An idle worker (free
slots, nothing due it could take) blocks on that list (BLPOP) until the token comes, the
earliest due time of a deferred job, or IDLE_POLL_S at most: the poll stays, as a slow
fallback, so a lost token (a producer that writes the queue itself, a worker that died holding
it) costs at most IDLE_POLL_S, never a job.

No stampede: Redis hands one token to one blocked worker, and the list never holds more than
one, so an enqueue wakes one idle worker at most (a burst of enqueues wakes one each, and each
woken worker claims as many jobs as it has free slots). A busy worker does not block here: it
polls every POLL_DELAY_S as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from ..contract.keys import wake_key
from ..lua import registry as lua

# How long a token waits for an idle worker before it expires (a worker that blocks later finds
# the jobs by its own first poll anyway).
TOKEN_TTL_MS = 60_000

# The part `wake` (worker/lua/wake.lua) of every script that makes a job due, and its constants:
# `lua.register(redis, "wake", "<script>", **wake.CONSTANTS)`.
CONSTANTS = {"TOKEN_TTL_MS": TOKEN_TTL_MS}

# Redis reads a BLPOP timeout that rounds to 0 ms as "block forever": shorter waits sleep here.
SHORTEST_BLOCK_S = 0.002


def signal(pipe: Pipeline, queue_name: str) -> None:
    """Add the wake-up to a pipeline or transaction that made a job due now."""
    key = wake_key(queue_name)
    pipe.lpush(key, "1")
    pipe.ltrim(key, 0, 0)
    pipe.pexpire(key, TOKEN_TTL_MS)


class Wake:
    """One worker's side: wait for a token, and find when the next deferred job falls due."""

    def __init__(self, redis: Redis, queue_name: str, bulk_key: str, passes_key: str, waiting_prefix: str) -> None:
        self.redis = redis
        self.key = wake_key(queue_name)
        self._keys = [queue_name, bulk_key, passes_key]
        self._prefix = waiting_prefix
        self._next_due = lua.register(redis, "wake_next_due")

    @property
    def scripts(self) -> list[AsyncScript]:
        return [self._next_due]

    async def next_due_ms(self) -> float | None:
        """When the earliest job waiting falls due (ms; a past time: due already), None: none waits."""
        out: Any = await self._next_due(keys=self._keys, args=[self._prefix])
        return None if out is None else float(out)

    async def wait(self, timeout_s: float) -> bool:
        """Block until a token comes (True) or `timeout_s` passes (False)."""
        if timeout_s < SHORTEST_BLOCK_S:
            await asyncio.sleep(timeout_s)
            return False
        # (redis-py types the timeout as whole seconds; Redis >= 6 takes a fraction of one)
        popped = await self.redis.blpop([self.key], timeout=timeout_s)  # type: ignore[misc, arg-type]
        return popped is not None
