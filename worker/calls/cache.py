"""The response cache: an exact-match cache of answers in Redis, looked up before a call books
anything (rate-limit slot, budget), with one gateway call for identical requests in flight.

Which calls: CACHE_MODE `deterministic` (the default) answers calls at temperature 0 and the
calls of jobs that ask (`cache: true`); `all` every call; `off` none. A job's `cache: false`
opts it out. Streamed calls are never cached, looked up or stored: a stream is asked for its
time to first token, and a stored answer has none to give.

The key is the SHA-256 of the normalised request: the model called, the messages and every
parameter that can change the answer (JSON with sorted keys, so the order a producer wrote
them in does not matter), and the job's source. Left out are the parameters that only label,
store or schedule the call (`NOT_IN_KEY`): `user`, `safety_identifier`, `metadata`, `store`,
`prompt_cache_*`, `service_tier`, `stream`, `stream_options`.

Each source has its own cache: a hit would tell source B that source A asked the same thing,
what A was answered and what it cost. CACHE_ACROSS_SOURCES shares one cache between all sources
(jobs without a source are one more source).

A hit returns the stored answer with `cached: true`, `cost: 0` (`cost_source: cache`) and the
original call's cost as `saved_cost`; it makes no call, so nothing reaches the spend totals,
and the saving is added to `llm-router:spend:saved:<day>` in the same script that read it.

Single flight: a miss takes `llm-router:cache:lock:<sha256>` (SET NX with a LEASE_S expiry the
holder renews) in the same script as the lookup. Another worker finding the lock held
subscribes to `llm-router:cache:done:<sha256>` and blocks on it; the holder, when its call
ends, stores the answer (if it succeeded), drops the lock and publishes, in one script. The
waiters then read the answer (a hit), or, when the call failed, one of them takes the lock
and calls. A holder killed mid-call stops renewing: its lock expires within LEASE_S and a
waiter takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from ..contract.keys import (
    cache_done_channel,
    cache_key,
    cache_lock_key,
    saved_source_model_key,
    spend_saved_key,
    today,
)
from ..contract.models import ModelAnswer
from ..contract.serde import as_text
from ..lua import registry as lua
from ..observe import metrics as m
from ..process.scripts import run_scripts
from .gemini import is_gemini

if TYPE_CHECKING:
    from ..contract.settings import Settings
    from .call import Call

log = logging.getLogger("llm_router.cache")

# Parameters that do not change the answer: they label, store or schedule the call.
NOT_IN_KEY = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "service_tier",
    }
)
# What a cached answer keeps: what the model said, and what it cost.
STORED = {"content", "tool_calls", "function_call", "finish_reason", "choices", "usage", "cost", "cost_source"}
# A waiter looks again at least this often, whatever it was told (a missed message costs this).
RECHECK_S = 5.0


def wanted(settings: Settings, job_cache: bool | None, payload: dict[str, Any]) -> bool:
    """Whether a call of this job goes through the cache."""
    if settings.cache_mode == "off" or job_cache is False or payload.get("stream"):
        return False
    return job_cache is True or settings.cache_mode == "all" or payload.get("temperature") == 0


def request_digest(model: str, payload: dict[str, Any], native: bool = False, source: str | None = None) -> str:
    """The SHA-256 of the normalised request (see NOT_IN_KEY); `native`: sent to Gemini's own
    endpoint; `source`: the source whose cache it is in (None: the cache shared by all sources)."""
    request = {k: v for k, v in payload.items() if k not in NOT_IN_KEY}
    request["model"] = model
    if native:
        request["gemini_native"] = True
    if source is not None:
        request["llm_router_source"] = source
    return hashlib.sha256(b"v1\n" + orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class Lookup:
    """`hit` (answer JSON, its original cost), `lead` (this caller holds the lock), or `wait`
    (another holds it, for `wait_s` more at most)."""

    status: str
    answer: str = ""
    cost: float | None = None
    wait_s: float = 0.0


class ResponseCache:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.lock_ms = int(settings.lease_s * 1000)
        self._lookup = lua.register(redis, "cache_lookup")
        self._finish = lua.register(redis, "cache_finish")
        self._renew = lua.register(redis, "cache_renew")

    @property
    def scripts(self) -> list[AsyncScript]:
        """The scripts a cacheable call runs (lookup, store): preloaded at start-up."""
        return [self._lookup, self._finish]

    async def lookup(self, digest: str, model: str, token: str, source: str = "none") -> Lookup:
        """A hit's saving is counted under `model` and under `source` and `model` together (the
        spend records' name of a call with no source: `none`)."""
        day = today()
        keys = [cache_key(digest), cache_lock_key(digest), spend_saved_key(day), saved_source_model_key(day)]
        args = [token, self.lock_ms, self.settings.spend_retention_days * 86400, model, f"{source}|{model}"]
        # through worker.process.scripts: sent with the other jobs' calls of this event-loop turn
        [(status, value, cost)] = await run_scripts(self.redis, [(self._lookup, keys, args)])
        status, value, cost = as_text(status), as_text(value), as_text(cost)
        if status == "hit":
            return Lookup("hit", value, float(cost) if cost else None)
        if status == "wait":
            return Lookup("wait", wait_s=max(int(value), 50) / 1000)
        return Lookup("lead")

    async def follow(self, digest: str, model: str, token: str, source: str = "none") -> Lookup:
        """Wait for the lock's holder: its answer (a hit), or the lock (its call failed, or it died)."""
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(cache_done_channel(digest))  # listen before looking: nothing is missed
            while True:
                found = await self.lookup(digest, model, token, source)
                if found.status != "wait":
                    return found
                # the holder publishes when done; if it died, its lock expires after wait_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_next_message(pubsub), min(found.wait_s, RECHECK_S))

    async def finish(self, digest: str, token: str, answer: ModelAnswer | None) -> None:
        """Store a succeeded call's answer (None: nothing to store), drop the lock, wake the waiters."""
        stored = "" if answer is None else answer.model_dump_json(include=STORED, exclude_none=True)
        cost = "" if answer is None or answer.cost is None else repr(answer.cost)
        keys = [cache_key(digest), cache_lock_key(digest)]
        args = [token, stored, cost, self.settings.cache_ttl_s, cache_done_channel(digest)]
        await run_scripts(self.redis, [(self._finish, keys, args)])

    async def renew(self, digest: str, token: str) -> None:
        """Keep the lock while this holder's call runs (every third of its expiry)."""
        while True:
            await asyncio.sleep(self.lock_ms / 3000)
            try:
                await self._renew(keys=[cache_lock_key(digest)], args=[token, self.lock_ms])
            except RedisError as exc:  # the next renewal may get through; the lock outlives one miss
                log.warning("response cache: lock renewal failed (%s)", type(exc).__name__)


class Flight:
    """One model's call through the cache: `hit` is the cached answer, else the caller calls
    and hands a succeeded answer to `keep`."""

    def __init__(self, hit: ModelAnswer | None = None) -> None:
        self.hit = hit
        self.answer: ModelAnswer | None = None

    def keep(self, answer: ModelAnswer) -> None:
        self.answer = answer


@contextlib.asynccontextmanager
async def flight(call: Call, model: str) -> AsyncIterator[Flight]:
    """The cached answer for `call` to `model`, or the right to call (others wait for it)."""
    if not wanted(call.settings, call.cache, call.payload):
        yield Flight()
        return
    cache, label = call.resources.cache, call.resources.labels.model(model)
    started = time.perf_counter()
    source = None if call.settings.cache_across_sources else (call.source or "")  # "": no source (not a valid name)
    digest = request_digest(model, call.payload, call.gemini_native and is_gemini(model), source)
    token = uuid.uuid4().hex
    found = await cache.lookup(digest, model, token, call.source or "none")
    if found.status == "wait":
        found = await cache.follow(digest, model, token, call.source or "none")
    if found.status == "hit":
        m.CACHE_HITS.labels(label).inc()
        if found.cost:
            m.CACHE_SAVED.labels(label).inc(found.cost)
        yield Flight(_hit(model, found, time.perf_counter() - started))
        return
    m.CACHE_MISSES.labels(label).inc()
    flying = Flight()
    renewing = asyncio.create_task(cache.renew(digest, token))
    try:
        yield flying
    finally:
        renewing.cancel()
        # shielded: a job cancelled mid-call must still drop its lock and wake the waiters
        await asyncio.shield(cache.finish(digest, token, flying.answer))


def _hit(model: str, found: Lookup, latency_s: float) -> ModelAnswer:
    stored = orjson.loads(found.answer)
    stored.update(cost=0.0, cost_source="cache", saved_cost=found.cost, cached=True, latency_s=latency_s)
    return ModelAnswer(**stored, model=model, status="succeeded")


async def _next_message(pubsub: Any) -> None:
    while await pubsub.get_message(ignore_subscribe_messages=True, timeout=None) is None:
        pass
