"""Fair share between sources: each source (a producer's `source`) waits in a sub-queue of its
own, and workers take jobs from the sub-queues by weighted fair queuing (stride scheduling), so
no source can starve another however many jobs it queues.

Sources are bounded: the ones the settings name (SOURCE_WEIGHTS, SOURCE_LIMITS, the ingress's
INGRESS_TOKENS, METRIC_SOURCES), then the first FAIR_SHARE_MAX_SOURCES others seen (a set in
Redis, so the bound is the fleet's, not one process's); past it every new name shares `other`.
Jobs without a source share `default`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ..contract.keys import (
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    RESULT_PREFIX,
    RETRY_KEY_TTL_S,
    RETRY_PREFIX,
    SOURCE_LIMIT_PREFIX,
    fair_key,
    wake_key,
)
from ..contract.settings import Settings, SourceLimit
from ..lua import registry as lua
from ..process import wake
from . import tokens

DEFAULT_SOURCE = "default"
OTHER_SOURCE = "other"


def known_sources(settings: Settings) -> frozenset[str]:
    """The sources the configuration names: each has a sub-queue whatever else is seen."""
    names = set(settings.source_weights) | set(settings.source_limits) | set(settings.metric_sources)
    names |= {g.source for g in settings.grants().values() if g.source is not None}
    return frozenset(names | {DEFAULT_SOURCE, OTHER_SOURCE})


def weight(settings: Settings, source: str) -> float:
    """A source's share (SOURCE_WEIGHTS; 1 when not named)."""
    return settings.source_weights.get(source, 1.0)


# "Far over" its quota (SOURCE_LIMITS): a source is refused new jobs (the ingress's 429, the
# Python enqueue's SourceOverQuota) while more of its jobs wait than its quota clears in a
# minute. What a quota clears in a minute, in jobs like the one being enqueued: `rpm` of them;
# `tpm` / the job's tokens (its prompt's estimate plus its completion cap, 512 without one, as
# the limiter books it); `concurrency` x 60, what it runs in a minute if each job takes a
# second (LLM calls take longer: this refuses only a backlog of many minutes). With several,
# the least.
SECONDS_A_JOB = 1.0
COMPLETION_ESTIMATE = 512  # worker.calls.routing.DEFAULT_COMPLETION_ESTIMATE


def job_tokens(payload: dict[str, Any]) -> int:
    """What the limiter books for one call of an OpenAI-style payload: its prompt's estimate
    plus its completion cap (COMPLETION_ESTIMATE without one) for each of its `n` choices."""
    caps = [t for t in (payload.get("max_tokens"), payload.get("max_completion_tokens")) if t]
    return tokens.input_estimate(payload) + (min(caps) if caps else COMPLETION_ESTIMATE) * (payload.get("n") or 1)


def clears_in_a_minute(limit: SourceLimit | None, job_tokens: int) -> float:
    """How many jobs of `job_tokens` tokens a source's quota clears in a minute (0: no quota)."""
    if limit is None:
        return 0.0
    each = [
        limit.rpm,
        limit.tpm / max(job_tokens, 1) if limit.tpm else None,
        limit.concurrency * 60 / SECONDS_A_JOB if limit.concurrency else None,
    ]
    return min((x for x in each if x), default=0.0)


def waiting_key(queue_name: str, source: str) -> str:
    """A source's sub-queue: its waiting jobs, scored as they would be in the queue."""
    return fair_key(queue_name, "q", source)


def passes_key(queue_name: str) -> str:
    """Sorted set source -> virtual time of its next pick: the sources with jobs waiting."""
    return fair_key(queue_name, "pass")


def clock_key(queue_name: str) -> str:
    """The virtual time of the last pick: where a source that starts waiting joins."""
    return fair_key(queue_name, "vt")


def running_key(queue_name: str, source: str) -> str:
    """Sorted set job id -> lease end: the source's running jobs."""
    return fair_key(queue_name, "run", source)


def seen_key(queue_name: str) -> str:
    """Set: the sources the settings do not name that were given a sub-queue (first seen)."""
    return fair_key(queue_name, "seen")


def line_key(queue_name: str, model: str, bulk: bool = False) -> str:
    """Sorted set job id -> tag: the model's slot line, the interactive jobs waiting for its next
    rate-limit slot (`bulk`: the bulk jobs' line, behind every one of them)."""
    return fair_key(queue_name, "bulk-line" if bulk else "line", model)


def line_state_key(queue_name: str, model: str, bulk: bool = False) -> str:
    """Hash: a slot line's virtual time (`vt`), each source's last tag (`s:<source>`) and each
    member's deadline (`d:<job id>`, ms)."""
    return fair_key(queue_name, "bulk-line-state" if bulk else "line-state", model)


# How late a member of a slot line may ask again (past the time it was told) before it is taken
# off: a killed worker's job holds the line this long at most.
LINE_GRACE_MS = 200


@dataclass
class LineTicket:
    """A job's place in a model's slot line (see worker/lua/fair_line.lua): its source (bounded), the
    stride its weight gives, whether it is a bulk job (in the bulk line, behind every
    interactive member), and whether it may join (a job that would give its worker slot back
    does not, unless its turn is next). Keys: the interactive line and its state, then the bulk
    line and its state."""

    keys: tuple[str, str, str, str]
    job_id: str
    source: str
    stride: float
    bulk: bool
    join: bool

    def args(self, r_ms: float, horizon_ms: int, recheck_ms: int) -> list[str]:
        """The admission's last ARGV: '@line', the job, its source, then the numbers in one."""
        numbers = (
            f"{self.stride!r},{int(self.join)},{LINE_GRACE_MS},{recheck_ms},{r_ms!r},{horizon_ms},{int(self.bulk)}"
        )
        return ["@line", self.job_id, self.source, numbers]


def ticket(settings: Settings, model: str, job_id: str, source: str, bulk: bool, join: bool) -> LineTicket:
    q = settings.queue_name
    keys = (line_key(q, model), line_state_key(q, model), line_key(q, model, True), line_state_key(q, model, True))
    return LineTicket(keys, job_id, source, 1 / weight(settings, source), bulk, join or bulk)


async def leave_line(redis: Redis, t: LineTicket) -> None:
    """A member of a slot line that stops waiting without booking (it gave up, moved to another
    model, was cancelled): off the line, so the next one needs not wait out its deadline."""
    line, state = t.keys[2:] if t.bulk else t.keys[:2]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(line, t.job_id)
        pipe.hdel(state, "d:" + t.job_id)
        await pipe.execute()


@dataclass
class SourceDepth:
    """One source's jobs waiting in its sub-queue, the due time of its front one (ms; None:
    nothing waits), and its jobs running now."""

    source: str
    waiting: int
    front_ms: float | None
    running: int


class FairQueue:
    """The sources' sub-queues of one queue, and the claim that takes from them by weight."""

    def __init__(self, redis: Redis, settings: Settings, queue_name: str) -> None:
        self.redis = redis
        self.settings = settings
        self.queue_name = queue_name
        self._claim = lua.register(redis, "fair_claim", RETRY_KEY_TTL_S=RETRY_KEY_TTL_S)
        self._requeue = lua.register(redis, "wake", "fair_requeue", **wake.CONSTANTS)
        self._depth = lua.register(redis, "fair_depth")
        named = set(settings.source_weights) | set(settings.source_limits)
        self._conf: list[Any] = []
        scale = settings.spacing_ms  # as worker.limits.limiter spaces requests
        for source in sorted(named):
            limit = settings.source_limits.get(source)
            concurrency = (limit.concurrency or 0) if limit else 0
            r_ms = scale / limit.rpm if limit and limit.rpm else 0
            quota = "1" if limit and (limit.rpm or limit.tpm) else "0"
            self._conf += [source, weight(settings, source), concurrency, r_ms, quota]

    @property
    def scripts(self) -> list[AsyncScript]:
        return [self._claim, self._requeue, self._depth]

    async def claim(self, free: int, now_ms: int, lease_ms: int) -> list[list[Any]]:
        """Up to `free` jobs by weight across the sources; seven values each (see CLAIM)."""
        q = self.queue_name
        args: list[Any] = [free, now_ms, lease_ms, JOB_PREFIX, IN_PROGRESS_PREFIX, RESULT_PREFIX, RETRY_PREFIX]
        args += [waiting_key(q, ""), running_key(q, ""), free + max(free, 16), SOURCE_LIMIT_PREFIX]
        args += [int(self.settings.bulk_horizon_s * 1000), *self._conf]
        out = await self._claim(keys=[passes_key(q), clock_key(q), q], args=args)
        return [out[i : i + 7] for i in range(0, len(out), 7)]

    async def any_waiting(self) -> bool:
        """Whether any source has jobs waiting (one command)."""
        return bool(await self.redis.zcard(passes_key(self.queue_name)))

    async def feed(self, ready_max: int, now_ms: int) -> int:
        """For arq's own Worker (`arq worker.WorkerSettings`), which reads only the queue: move
        jobs from the sub-queues, by weight, to the queue, due now, until `ready_max` are due
        there. Returns how many were moved."""
        ready = await self.redis.zcount(self.queue_name, "-inf", now_ms)
        if ready >= ready_max:
            return 0
        return sum(what == b"fed" for _, _, what, *_ in await self.claim(ready_max - ready, now_ms, 0))

    def requeue_call(
        self, job_id: str, source: str, at_ms: int | bytes, uncounted: bool = False
    ) -> tuple[AsyncScript, list[str], list[Any]]:
        q = self.queue_name
        keys = [q, IN_PROGRESS_PREFIX + job_id, waiting_key(q, source), running_key(q, source)]
        keys += [passes_key(q), clock_key(q), RETRY_PREFIX + job_id, wake_key(q)]
        return self._requeue, keys, [job_id, at_ms, source, "1" if uncounted else "0"]

    async def depths(self, now_ms: int, always: list[str] | None = None) -> list[SourceDepth]:
        """What waits and runs, by source (the sources with jobs waiting, and `always`)."""
        q = self.queue_name
        out = await self._depth(
            keys=[passes_key(q)], args=[now_ms, waiting_key(q, ""), running_key(q, ""), *(always or [])]
        )
        return parse_depths(out)


def parse_depths(out: list[Any]) -> list[SourceDepth]:
    """DEPTH's flat answer, four values a source."""
    return [
        SourceDepth(
            out[i].decode(), int(out[i + 1]), None if float(out[i + 2]) < 0 else float(out[i + 2]), int(out[i + 3])
        )
        for i in range(0, len(out), 4)
    ]


async def report(redis: Redis, settings: Settings, now: float) -> list[dict[str, Any]]:
    """Per source (those with jobs waiting, and those SOURCE_WEIGHTS and SOURCE_LIMITS name):
    jobs waiting, running, how long its front job has waited (s, at `now`), its weight and quota.
    What `llm-router sources` prints and the console's Overview shows."""
    named = sorted(set(settings.source_weights) | set(settings.source_limits))
    depths = await FairQueue(redis, settings, settings.queue_name).depths(int(now * 1000), named)
    rows: list[dict[str, Any]] = []
    for d in depths:
        limit = settings.source_limits.get(d.source)
        rows.append(
            {
                "source": d.source,
                "waiting": d.waiting,
                "running": d.running,
                "oldest_wait_s": round(max(now - d.front_ms / 1000, 0.0), 3) if d.front_ms is not None else 0.0,
                "weight": weight(settings, d.source),
                "quota": limit.model_dump(exclude_none=True) if limit else {},
            }
        )
    return rows
