"""Many result waits in one process on one Redis connection (the HTTP ingress's long-polls).

`ResultStore.wait` subscribes a connection of its own per wait: right for a script, not for a
server holding a thousand long-polls. Here one task holds one pattern subscription to every
job's `done` channel (or the channels of its `prefixes`: producers.streams adds the live
events') and wakes the waiters of the job a message names; a wait is a future,
not a thread or a connection. A message missed while Redis is away costs at most `RECHECK_S`:
each waiter looks at the result again that often.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.contract.keys import DONE_PREFIX
from worker.contract.models import JobResult
from worker.contract.store import ResultStore

log = logging.getLogger("llm_router.http")

RECHECK_S = 5.0


class ResultWaits:
    def __init__(self, redis: Redis, store: ResultStore, prefixes: tuple[str, ...] = (DONE_PREFIX,)) -> None:
        self.redis = redis
        self.store = store
        self.prefixes = prefixes  # the channels `<prefix><job_id>` whose messages wake a job's waiters
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def wait(self, job_id: str, timeout: float) -> JobResult | None:
        """The result, waiting up to `timeout` seconds for it; None if it did not come."""
        await self.subscribed(min(timeout, 1.0))
        deadline = time.monotonic() + timeout
        while True:
            with self.listening(job_id) as woken:  # listen before looking: nothing is missed
                result = await self.store.get(job_id)
                remaining = deadline - time.monotonic()
                if result is not None or remaining <= 0:
                    return result
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken, min(remaining, RECHECK_S))

    async def woken(self, woken: asyncio.Future[None], timeout: float) -> None:
        """Wait for `woken` (from `listening`), up to `timeout` (RECHECK_S at most); at once if the
        subscription is not in place (its message may never come)."""
        if self._subscribed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken, min(timeout, RECHECK_S))

    async def subscribed(self, timeout: float) -> None:
        """Start listening, and wait up to `timeout` for the subscription to be in place."""
        self._start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout)

    @contextlib.contextmanager
    def listening(self, job_id: str) -> Iterator[asyncio.Future[None]]:
        """A future done at the next message naming `job_id` (look at Redis after entering)."""
        self._start()
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, set()).add(woken)
        try:
            yield woken
        finally:
            self._forget(job_id, woken)

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _forget(self, job_id: str, woken: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(woken)
            if not waiters:
                del self._waiters[job_id]

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.psubscribe(*(prefix + "*" for prefix in self.prefixes))
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        self._wake(message)
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                log.warning("result waits: Redis unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)

    def _wake(self, message: dict[str, object]) -> None:
        if message.get("type") != "pmessage":
            return
        raw = message["channel"]
        channel = raw.decode() if isinstance(raw, bytes) else str(raw)
        job_id = next((channel.removeprefix(p) for p in self.prefixes if channel.startswith(p)), channel)
        for woken in self._waiters.get(job_id, ()):
            if not woken.done():
                woken.set_result(None)
