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
    RETRY_PREFIX,
    SOURCE_LIMIT_PREFIX,
    fair_key,
    wake_key,
)
from ..contract.settings import Settings, SourceLimit
from ..lua import registry as lua
from ..process.wake import WAKE_FUNCTION
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


# Where a job that starts waiting goes (inside the enqueue script, producers.api): the sub-queue
# of its source, or of `other` when the source is not one the settings name and the fleet has
# given FAIR_SHARE_MAX_SOURCES others a sub-queue already; a source that had nothing waiting
# joins the claim's rotation at the clock (the virtual time of the last pick): it gets its share
# from now on, never credit for the time it sent nothing.
# Lua, spliced into the enqueue script: `fair_enqueue(passes, clock, seen, source, known, bound,
# waiting prefix, score, id)`; answers the source it used.
ENQUEUE_FUNCTION = lua.source("fair_enqueue")

# Weighted fair queuing across the sources' sub-queues, by stride scheduling: each source with
# jobs waiting has a pass (virtual time); a pick takes the front job of the source with the
# lowest pass and moves that pass on by 1/weight, so over any stretch where sources wait each
# is picked in proportion to its weight, and a source alone is picked every time
# (work-conserving). All of it lives in Redis and changes only here, so every worker shares one
# rotation. A source whose front job is not due yet (deferred by a rate limit), or that has its
# SOURCE_LIMITS concurrency running, is passed over this time, losing nothing but the credit:
# a pass is never kept behind the clock (no source banks credit while it cannot run).
# A picked job is claimed as the bulk lane's are (worker.process.lease PROMOTE): into the queue, scored
# at its lease's end, in progress under the lease, its run counted; and listed as running for its
# source until its lease ends or its worker lets it go.
# A source with an rpm/tpm quota is given no more jobs than its schedule (worker.limits.limiter) can
# start within the horizon: the rest wait in its sub-queue, holding no worker slot.
# KEYS: passes, clock, queue
# ARGV: free slots, now ms, lease ms, job record / in-progress / result / retry / waiting / running
#       prefixes, most jobs to take off, quota hash prefix, horizon ms, then (source, weight,
#       concurrency or 0, ms between requests or 0, has a quota 1/0) for the sources the settings
#       name (others: weight 1, no limit)
# Answers seven values a job: id, score, what (run/done/missing/error), record, tries, source, and
# its score in the sub-queue (a job that gives its slot back returns there, in its place).
# With a lease of 0 the picked jobs are only moved to the queue, due now ('fed': FairQueue.feed).
CLAIM = """
local free, now, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local jp, ip, rp, tp, wp, runp = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local pops, qp, horizon = tonumber(ARGV[10]), ARGV[11], tonumber(ARGV[12])
local conf = {}
for i = 13, #ARGV, 5 do
  conf[ARGV[i]] = {tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4] == '1'}
end
local clock = tonumber(redis.call('GET', KEYS[2]) or '0')
local sources = {}
local listed = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #listed, 2 do
  local name = listed[i]
  local c, pass = conf[name] or {1, 0, 0, false}, tonumber(listed[i + 1])
  local s = {name = name, pass = math.max(pass, clock), stride = 1 / c[1], room = -1, moved = pass < clock}
  if c[2] > 0 then
    redis.call('ZREMRANGEBYSCORE', runp .. name, '-inf', now)
    s.room = math.max(c[2] - redis.call('ZCARD', runp .. name), 0)
  end
  if c[4] then
    local q = redis.call('HMGET', qp .. name, 'r', 't')
    local r, t = math.max(tonumber(q[1]) or 0, now), tonumber(q[2]) or 0
    local room = 0
    if t <= now + horizon and r <= now + horizon then
      room = c[3] > 0 and math.floor((now + horizon - r) / c[3]) + 1 or -1
    end
    if room >= 0 and (s.room < 0 or room < s.room) then s.room = room end
  end
  table.insert(sources, s)
end
local out, score, picked = {}, now + lease, nil
while free > 0 and pops > 0 do
  local best = nil
  for _, s in ipairs(sources) do
    if not s.out and s.room ~= 0 and (best == nil or s.pass < best.pass) then best = s end
  end
  if best == nil then break end
  local waiting = wp .. best.name
  local front = redis.call('ZPOPMIN', waiting)
  if #front == 0 then
    best.out, best.empty = true, true
  elseif tonumber(front[2]) > now then
    redis.call('ZADD', waiting, front[2], front[1])  -- not due yet (deferred): back, untouched
    best.out = true
  else
    pops = pops - 1
    local id, what, record, tries = front[1], 'run', '', 0
    best.touched, picked = true, best.pass
    if redis.call('EXISTS', rp .. id) == 1 then
      what = 'done'
      redis.call('DEL', jp .. id)
    elseif redis.call('EXISTS', jp .. id) == 0 then
      what = 'missing'
    elseif lease == 0 then
      -- feeding arq's own Worker (see FairQueue.feed): into the queue, due now, not held
      what, free = 'fed', free - 1
      best.pass = best.pass + best.stride
      redis.call('ZADD', KEYS[3], now, id)
    else
      free = free - 1
      best.pass = best.pass + best.stride
      if best.room > 0 then best.room = best.room - 1 end
      redis.call('ZADD', KEYS[3], score, id)
      redis.call('PSETEX', ip .. id, lease, '1')
      redis.call('ZADD', runp .. best.name, score, id)
      best.ran = true
      record = redis.call('GET', jp .. id)
      tries = redis.pcall('INCR', tp .. id)
      if type(tries) == 'table' then
        what, record, tries = 'error', tries.err, 0
      else
        redis.call('EXPIRE', tp .. id, 88400)
      end
    end
    for _, v in ipairs({id, score, what, record, tries, best.name, front[2]}) do table.insert(out, v) end
  end
end
for _, s in ipairs(sources) do
  if s.ran then redis.call('PEXPIRE', runp .. s.name, lease) end
  if s.empty or (s.touched and redis.call('EXISTS', wp .. s.name) == 0) then
    redis.call('ZREM', KEYS[1], s.name)
  elseif s.touched or s.moved then
    redis.call('ZADD', KEYS[1], 'XX', string.format('%.17g', s.pass), s.name)
  end
end
if picked then redis.call('SET', KEYS[2], string.format('%.17g', picked)) end
return out
"""

# A job a worker lets go of (a wait: arq's Retry; a shutdown past its grace) goes back to its
# source's sub-queue, due at the given time, not to the queue: it waits its turn again among its
# source's jobs and other sources' (and is not running any more). Nothing happens to a job that
# left the queue meanwhile (its batch was cancelled): the queue entry is the claim's.
# A run that did nothing (its source at its quota) is given back: MAX_JOB_RUNS counts real runs.
# It wakes an idle worker (worker.process.wake), which takes it or blocks until it is due.
# KEYS: queue, in-progress, waiting, running, passes, clock, run count, wake list; ARGV: job id,
# due ms, source, give the run back ('1'/'0')
REQUEUE = (
    WAKE_FUNCTION
    + """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[4] == '1' and (tonumber(redis.call('GET', KEYS[7])) or 0) > 0 then redis.call('DECR', KEYS[7]) end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], 'NX', tonumber(redis.call('GET', KEYS[6]) or '0'), ARGV[3])
wake(KEYS[8])
return 1
"""
)

# What waits and runs, by source: for each source with jobs waiting (and each named in ARGV),
# its name, jobs waiting, the score of its front job (-1: none) and jobs running now.
# KEYS: passes; ARGV: now ms, waiting prefix, running prefix, then source names to report always
DEPTH = lua.source("fair_depth")


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
    """A job's place in a model's slot line (see LINE_FUNCTIONS): its source (bounded), the
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


# The slot line (fair share in the rate limit): the interactive jobs that wait for a model's
# next rate-limit slot, fleet-wide, each tagged by weighted fair queuing among the sources that
# have jobs waiting: a job's tag is its source's last tag in the line (or the line's virtual
# time, the tag of the last job that booked, if later) plus 1/weight. A slot within reach is
# booked only by the job with the lowest tag (and by a job whose tag is lower than every
# member's: B's first job waits behind none of A's); the others are told how long until their
# turn (the slot's distance past the horizon, plus a request interval for each job ahead) and
# join the line (unless they give their worker slot back instead). So the order jobs get slots
# in is the sources' fair order, not whoever asks first, and a source that starts waiting goes
# first, not behind the jobs another source has waiting. Bulk jobs have a line of their own,
# by the same weights, behind every interactive member: a bulk job books only while the
# interactive line is empty and its turn in the bulk line has come. A member that does not ask
# again within LINE_GRACE_MS of its time is taken off (its worker died). Spliced into
# worker.limits.limiter's admission: its ARGV ends with '@line', job id, source, 'stride,join,grace ms,
# recheck cap ms,request interval ms,horizon ms,bulk' and its KEYS with LineTicket's four.
LINE_FUNCTIONS = """
local function line_purge(lk, sk, id, now)
  for _ = 1, 16 do  -- members whose worker did not come back in time: off
    local front = redis.call('ZRANGE', lk, 0, 0)
    if #front == 0 or front[1] == id then return end
    local due = tonumber(redis.call('HGET', sk, 'd:' .. front[1]))
    if due and due >= now then return end
    redis.call('ZREM', lk, front[1])
    redis.call('HDEL', sk, 'd:' .. front[1])
  end
end
local function line_open(now, lk, sk, blk, bsk, id, src, spec)
  local v = {}
  for x in string.gmatch(spec, '[^,]+') do table.insert(v, tonumber(x)) end
  local L = {id = id, src = src, stride = v[1], join = v[2] == 1, grace = v[3], cap = v[4], r = v[5],
             horizon = v[6], now = now}
  line_purge(lk, sk, id, now)
  L.ahead = 0
  if v[7] == 1 then  -- a bulk job: behind every interactive member, in its own line
    L.ahead = redis.call('ZCARD', lk)
    lk, sk = blk, bsk
    line_purge(lk, sk, id, now)
  end
  L.lk, L.sk = lk, sk
  local tag = redis.call('ZSCORE', lk, id)
  if tag then
    L.tag, L.member = tonumber(tag), true
  else
    if redis.call('EXISTS', lk) == 0 then redis.call('DEL', sk) end  -- an empty line starts afresh
    local s = redis.call('HMGET', sk, 'vt', 's:' .. src)
    L.tag = math.max(tonumber(s[1]) or 0, tonumber(s[2]) or 0) + L.stride
  end
  L.ahead = L.ahead + redis.call('ZCOUNT', lk, '-inf', '(' .. string.format('%.17g', L.tag))
  return L
end
-- not booked: the wait until its turn, and whether the job is in the line: it joins (or stays)
-- if it may, or if its turn is next (no worker slot is held long for that)
local function line_wait(L, wait)
  local est = math.max(wait, 0) + L.ahead * L.r
  local joins = L.join or L.ahead == 0 or L.member
  if joins then
    if not L.member then
      redis.call('ZADD', L.lk, string.format('%.17g', L.tag), L.id)
      redis.call('HSET', L.sk, 's:' .. L.src, string.format('%.17g', L.tag))
    end
    local asks = math.min(math.max(est - L.horizon, 0), L.cap)
    redis.call('HSET', L.sk, 'd:' .. L.id, math.ceil(L.now + asks + L.grace))
    redis.call('PEXPIRE', L.lk, 600000)
    redis.call('PEXPIRE', L.sk, 600000)
  end
  return est, joins
end
-- booked: off the line, the line's virtual time at its tag; a job that booked without joining
-- while others wait counts as its source's last tag (its next one goes behind theirs)
local function line_booked(L)
  if L.member then
    redis.call('ZREM', L.lk, L.id)
    redis.call('HDEL', L.sk, 'd:' .. L.id)
  elseif redis.call('EXISTS', L.lk) == 0 then
    return
  else
    redis.call('HSET', L.sk, 's:' .. L.src, string.format('%.17g', L.tag))
  end
  local vt = tonumber(redis.call('HGET', L.sk, 'vt')) or 0
  if L.tag > vt then redis.call('HSET', L.sk, 'vt', string.format('%.17g', L.tag)) end
end
"""


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
        self._claim = redis.register_script(CLAIM)
        self._requeue = redis.register_script(REQUEUE)
        self._depth = redis.register_script(DEPTH)
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
