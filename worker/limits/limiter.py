"""What every worker process shares about the upstream, kept in Redis and changed only by Lua:

    llm-router:model:<model>      hash: r / t  next free request / token slot (ms, Redis clock)
                                       p            paused until (429 Retry-After, spent budget)
                                       open_until, fails, fails_since, probe  circuit breaker
    llm-router:model:_global      hash: r / t  for the optional global limit

Rate limiting is GCRA in its "virtual scheduling" form rather than a sliding window: each
model keeps the time its next request (and next token) may start. `admit` books the
earliest slot and returns how long to sleep until it, so callers queue in Redis without
polling, requests leave evenly spaced (a sliding-window gateway never sees a burst), and
the state is two numbers per model whatever the rate. A 429's Retry-After, or
`x-ratelimit-remaining-*: 0`, just moves the model's next slot to the reset time: every
worker then waits for it, not only the one that was told.

Tokens are booked from an estimate (prompt + max_tokens) when a call starts and the
difference is given back when the real usage is known (`settle`); a call that finds the
tokens booked so far not yet paid for books nothing and asks again when they will be, so
the tokens given back let it start sooner. A failed call gives back all it booked. A request
over the TPM limit itself is refused (`too_large`) rather than booked: one booking never moves
a model's schedule more than a window ahead. At most one request per window over the limit
(the one that starts at the window's edge) can be seen upstream; RATE_LIMIT_HEADROOM (or, with
the gateway's window known, RATE_LIMIT_WINDOW_S and RATE_LIMIT_JITTER_MS: Settings.spacing_ms)
keeps network jitter from turning that into a 429.

Budgets (worker.limits.budgets) ride on the same script: a call's worst case is checked against every
budget that applies and reserved with its slot, or the call books nothing (`budget`: refused,
`budget_wait`: calls in flight hold the rest); `settle` settles the reservation with the tokens.

The circuit breaker: K failures in a window open the circuit (`circuit`: callers skip the
model); once the open period ends one caller probes (`probe`) while the others ask again
every few hundred ms (`probing`), so they start as soon as the probe's success closes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ..contract.keys import GATE, GLOBAL_LIMIT, model_key, settled_key, source_limit_key
from ..contract.models import BudgetInfo
from ..contract.serde import as_text
from ..contract.settings import RateLimit, Settings
from ..process.scripts import run_scripts
from . import budgets
from .fair import LINE_FUNCTIONS, LineTicket

if TYPE_CHECKING:
    from .budgets import Reservation

# KEYS: gate (worker.limits.gate: a paused queue admits nothing), model hash, global hash
# ARGV: request interval ms, ms per token, tokens, global request interval ms, global ms per token,
#       max wait ms, probe lease ms, TPM limit, global TPM limit (0: none)
# then the budget's KEYS[4..] and ARGV[10..] (worker.limits.budgets: its reservation is made here, with the booking)
_ADMIT = """
--@budget:functions
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gate = redis.call('GET', KEYS[1])
if gate then return {'gate', 0, gate} end
--@budget:check
local tokens = tonumber(ARGV[3])
-- Fair share's slot line (worker.limits.fair LINE_FUNCTIONS), when given: the last four ARGV ('@line',
-- job id, source, numbers) and the last four keys (the line and its state, the bulk line and its).
local n, nk, line = #ARGV, #KEYS, nil
if n >= 13 and ARGV[n - 3] == '@line' then
  line = {KEYS[nk - 3], KEYS[nk - 2], KEYS[nk - 1], KEYS[nk], ARGV[n - 2], ARGV[n - 1], ARGV[n]}
  n, nk = n - 4, nk - 4
end
-- A source's quota (SOURCE_LIMITS, worker.limits.fair), when given: the six ARGV before those ('@source',
-- name, request interval ms, ms per token, TPM limit, horizon ms) and the key before those (its
-- hash r / t).
local S = nil
if n >= 15 and ARGV[n - 5] == '@source' then
  S = {key = KEYS[nk], r = tonumber(ARGV[n - 3]), t = tonumber(ARGV[n - 2]), tpm = tonumber(ARGV[n - 1]),
       horizon = tonumber(ARGV[n])}
end
-- A booking moves the token schedule by tokens * ms-per-token. More tokens than the TPM limit
-- would move it more than a whole window: such a request can never fit the limit, and booking
-- it would hold every later caller of the model that long. Refuse it at once, book nothing.
local function over(limit) return limit > 0 and tokens > limit end
if over(tonumber(ARGV[8])) then return {'too_large', 0, 'model'} end
if over(tonumber(ARGV[9])) then return {'too_large', 0, 'global'} end
if S and over(S.tpm) then return {'too_large', 0, 'source'} end
local m = redis.call('HMGET', KEYS[2], 'r', 't', 'open_until', 'probe', 'p')
local open_until = tonumber(m[3]) or 0
local probing = false
if open_until > 0 then
  if open_until > now then return {'circuit', open_until - now} end
  -- half-open: one probe call at a time across all workers. The others ask again soon
  -- ('probing', nothing booked): the probe's lease is only its worst case (the request
  -- timeout), a healthy probe settles in well under a second and closes the circuit.
  local probe = tonumber(m[4]) or 0
  if probe > now then return {'probing', probe - now} end
  probing = true
end
local g = redis.call('HMGET', KEYS[3], 'r', 't')
local sr, st = 0, 0
if S then
  local v = redis.call('HMGET', S.key, 'r', 't')
  sr, st = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  -- the source is at its quota: its job waits in its sub-queue, not in a worker slot ('quota')
  local until_free = math.max(sr, st) - now
  if until_free > S.horizon then return {'quota', math.ceil(until_free)} end
end
local start = math.max(now, tonumber(m[1]) or 0, tonumber(m[5]) or 0, tonumber(g[1]) or 0, sr)
local wait = start - now
-- fair share: the slot goes to the job whose turn it is in the line; the others are told when theirs is
-- ('line': as 'wait', the job in the line; 'retry' always is)
local L = line and line_open(now, unpack(line))
if L and (L.ahead > 0 or wait > tonumber(ARGV[6])) then
  local est, joined = line_wait(L, wait)
  return {joined and 'line' or 'wait', math.ceil(est)}
end
if wait > tonumber(ARGV[6]) then return {'wait', math.ceil(wait)} end
-- Tokens are not booked ahead: an estimate booked far into the future could not benefit
-- from the unused tokens that `settle` gives back. Until the tokens booked so far are
-- paid for, the caller sleeps and asks again ('retry'), nothing booked.
local tokens_free = math.max(tonumber(m[2]) or 0, tonumber(g[2]) or 0, st)
if tokens_free > start then
  local until_free = tokens_free - now
  if L then line_wait(L, until_free) end
  return {until_free > tonumber(ARGV[6]) and 'wait' or 'retry', math.ceil(until_free)}
end
if L then line_booked(L) end
-- book: the next request / token may start one interval after this one
local function book(key, r_ms, t_ms)
  local r_next = start + r_ms
  local t_next = start + tokens * t_ms
  if r_ms > 0 then redis.call('HSET', key, 'r', r_next) end
  if t_ms > 0 then redis.call('HSET', key, 't', t_next) end
  redis.call('PEXPIRE', key, math.ceil(math.max(r_next, t_next) - now) + 3600000)
end
--@budget:book
book(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]))
if probing then redis.call('HSET', KEYS[2], 'probe', start + tonumber(ARGV[7])) end
if tonumber(ARGV[4]) > 0 or tonumber(ARGV[5]) > 0 then book(KEYS[3], tonumber(ARGV[4]), tonumber(ARGV[5])) end
if S then book(S.key, S.r, S.t) end
return {probing and 'probe' or 'ok', math.ceil(wait), B.booked}
"""

# KEYS: model hash, global hash, the settlement's mark (keys.settled_key)
# ARGV: tokens to give back, ms per token, global ms per token, outcome (ok|fail|neutral),
#       pause ms, circuit failures, circuit window ms, circuit open ms, mark ms
# then a budget settlement's KEYS[4..6] and ARGV[10..] (worker.limits.budgets), settled first.
# A settlement sent again by the client after a lost answer (worker.process.scripts) finds its mark and
# answers what its first run did: tokens are given back, a failure counted, once.
# A source's quota (SOURCE_LIMITS), when the call booked on it: the last two ARGV ('@source', its
# ms per token) and the last key (its hash) get their tokens back too.
_SETTLE = """
local seen = redis.call('GET', KEYS[3])
if seen then return tonumber(seen) end
redis.call('SET', KEYS[3], 0, 'PX', ARGV[9])
--@budget:settle
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local refund = tonumber(ARGV[1])
if refund ~= 0 then
  local tt = tonumber(redis.call('HGET', KEYS[1], 't'))
  if tt then redis.call('HSET', KEYS[1], 't', tt - refund * tonumber(ARGV[2])) end
  local gt = tonumber(redis.call('HGET', KEYS[2], 't'))
  if gt and tonumber(ARGV[3]) > 0 then redis.call('HSET', KEYS[2], 't', gt - refund * tonumber(ARGV[3])) end
  if ARGV[#ARGV - 1] == '@source' then
    local st = tonumber(redis.call('HGET', KEYS[#KEYS], 't'))
    if st then redis.call('HSET', KEYS[#KEYS], 't', st - refund * tonumber(ARGV[#ARGV])) end
  end
end
local pause = tonumber(ARGV[5])
if pause > 0 then
  local p = tonumber(redis.call('HGET', KEYS[1], 'p')) or 0
  if now + pause > p then redis.call('HSET', KEYS[1], 'p', now + pause) end
  redis.call('PEXPIRE', KEYS[1], pause + 3600000)
end
local outcome = ARGV[4]
if outcome == 'ok' then
  redis.call('HDEL', KEYS[1], 'fails', 'fails_since', 'open_until', 'probe')
elseif outcome == 'neutral' then
  -- half-open and the call said nothing about the model's health (a 429, a 4xx): free the
  -- probe slot, so the next caller probes instead of everyone waiting out the probe's lease
  local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until')) or 0
  if open_until > 0 and open_until <= now then redis.call('HDEL', KEYS[1], 'probe') end
elseif outcome == 'fail' then
  local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until')) or 0
  local since = tonumber(redis.call('HGET', KEYS[1], 'fails_since')) or 0
  if now - since > tonumber(ARGV[7]) then
    redis.call('HSET', KEYS[1], 'fails', 0, 'fails_since', now)
  end
  local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
  -- a failed probe (half-open) re-opens at once
  if fails >= tonumber(ARGV[6]) or open_until > 0 then
    redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[8]), 'fails', 0, 'fails_since', now)
    redis.call('HDEL', KEYS[1], 'probe')
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[8]) + 3600000)
    redis.call('SET', KEYS[3], 1, 'PX', ARGV[9])
    return 1
  end
end
return 0
"""


# The longest a member of a slot line (worker.limits.fair) sleeps before it asks again: worker.calls.routing's
# BULK_RECHECK_S.
LINE_RECHECK_MS = 1000

# How long a settlement's mark is kept: longer than the Redis client retries a command
# (worker.contract.connections: 40 tries, backoff capped at 2 s, about 75 s in all). About 100 bytes a
# call: 3 MB at 100 calls a second.
SETTLED_MARK_MS = 5 * 60 * 1000


@dataclass
class Admission:
    """`ok`/`probe`: a slot is booked, sleep `wait_s` then call (`probe`: the circuit's trial call).
    `retry`: tokens are short, nothing booked: sleep `wait_s` and ask again. `wait`: the next
    slot is over the caller's limit, nothing booked (with a slot line ticket: or others' turns
    come first; `wait_s` estimates the caller's); `line`: as `wait`, and the caller is in the
    model's slot line (worker.limits.fair). `circuit`: the circuit is open for `wait_s`,
    the model is skipped. `probing`: half-open and another call is probing: nothing booked, ask
    again soon (`wait_s` is only the probe's lease). `too_large`: the tokens are over what one
    window allows (`limit` names it): nothing booked, waiting cannot help. `gate`: the whole
    queue is paused (`gate` says why)."""

    status: str
    wait_s: float
    gate: dict[str, Any] | None = None
    limit: str | None = None
    # worker.limits.budgets: `budget` refused (the scope and amounts; None: not cheaper than a model
    # refused before), or the reservation booked with the slot (settle it after the call)
    refusal: BudgetInfo | None = None
    reservation: Reservation | None = None
    worst_usd: float | None = None  # `budget`, `budget_wait`: the call's worst case

    @property
    def booked(self) -> bool:
        return self.status in ("ok", "probe")


def _intervals(limit: RateLimit | None, scale: float) -> tuple[float, float]:
    """(ms between requests, ms per token) for a per-minute limit (`scale`: Settings.spacing_ms);
    0 where there is none."""
    if limit is None:
        return 0.0, 0.0
    return (scale / limit.rpm if limit.rpm else 0.0), (scale / limit.tpm if limit.tpm else 0.0)


class Limiter:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.budgets = budgets.Budgets(redis, settings)
        self._global = _intervals(settings.global_rate_limit, settings.spacing_ms)
        self._admit = redis.register_script(LINE_FUNCTIONS + budgets.splice(_ADMIT))
        self._settle = redis.register_script(budgets.splice_settle(_SETTLE, keys=3, args=9))

    @property
    def scripts(self) -> list[AsyncScript]:
        """The scripts every job runs here (admission, settle): preloaded at start-up."""
        return [self._admit, self._settle]

    def intervals(self, model: str) -> tuple[float, float]:
        return _intervals(self.settings.rate_limits.get(model), self.settings.spacing_ms)

    def limited(self, model: str) -> bool:
        """Whether calls to `model` are spaced by a rate limit (its own or the global one)."""
        return any(self.intervals(model)) or any(self._global)

    def source_quota(self, source: str | None) -> tuple[list[str], list[Any]]:
        """The keys and arguments a call of `source` adds to the admission (SOURCE_LIMITS rpm/tpm:
        see the script); none when its source has no such quota."""
        limit = self.settings.source_limits.get(source) if source else None
        if source is None or limit is None or (limit.rpm is None and limit.tpm is None):
            return [], []
        r_ms, t_ms = _intervals(RateLimit(rpm=limit.rpm, tpm=limit.tpm), self.settings.spacing_ms)
        horizon_ms = int(self.settings.bulk_horizon_s * 1000)
        return [source_limit_key(source)], ["@source", source, r_ms, t_ms, limit.tpm or 0, horizon_ms]

    async def admit(
        self,
        model: str,
        tokens: int,
        max_wait_s: float,
        budget: budgets.Plan | None = None,
        source: str | None = None,
        line: LineTicket | None = None,
    ) -> Admission:
        """Book `model`'s next slot unless it is further off than `max_wait_s`; with a budget
        plan, only if the call's worst case fits (and reserve it with the slot); with a source
        that has a quota, on the source's schedule too (`quota`: it is further off than
        BULK_HORIZON_S, nothing booked); with a ticket, only in its turn in the model's slot line
        (worker.limits.fair: `wait` until then)."""
        r_ms, t_ms = self.intervals(model)
        args = [
            r_ms,
            t_ms,
            tokens,
            *self._global,
            int(max_wait_s * 1000),
            int(self.settings.request_timeout_s * 1000) + 1000,
            _tpm(self.settings.rate_limits.get(model)),
            _tpm(self.settings.global_rate_limit),
            *(budget.args if budget else ()),
        ]
        keys = [GATE, model_key(model), GLOBAL_LIMIT, *(budget.keys if budget else ())]
        quota_keys, quota_args = self.source_quota(source)
        keys, args = keys + quota_keys, args + quota_args
        if line is not None:
            horizon_ms = int(self.settings.bulk_horizon_s * 1000)
            keys, args = [*keys, *line.keys], [*args, *line.args(r_ms, horizon_ms, LINE_RECHECK_MS)]
        # through worker.process.scripts: sent with the other jobs' calls of this event-loop turn
        [(status, wait_ms, *rest)] = await run_scripts(self.redis, [(self._admit, keys, args)])
        status = as_text(status)
        if status == "budget" and budget is not None:
            return Admission(status, 0.0, refusal=self.budgets.refused(budget, rest), worst_usd=float(rest[4]))
        if status == "budget_wait":
            return Admission(status, 0.0, worst_usd=float(rest[0]))
        if status in ("ok", "probe"):
            booked = self.budgets.booked(budget, rest[0]) if budget is not None and rest else None
            return Admission(status, int(wait_ms) / 1000, reservation=booked)
        if status == "too_large":
            return Admission(status, 0.0, limit=self.tpm_limit(model, as_text(rest[0]), source))
        gate = json.loads(rest[0]) if rest else None
        return Admission(status, int(wait_ms) / 1000, gate)

    def tpm_limit(self, model: str, scope: str, source: str | None = None) -> str:
        """The TPM limit a too large request is over, named for a person: "gpt-4.1's TPM limit of 600000"."""
        if scope == "source" and source is not None:
            return f"source {source}'s TPM quota (SOURCE_LIMITS) of {_number(self.settings.source_limits[source].tpm)}"
        if scope == "model":
            return f"{model}'s TPM limit of {_number(self.settings.rate_limits[model].tpm)}"
        return f"the global TPM limit (GLOBAL_RATE_LIMIT) of {_number(self.settings.global_rate_limit.tpm)}"

    async def settle(
        self,
        model: str,
        *,
        booked_tokens: int,
        used_tokens: int | None,
        outcome: str,
        pause_s: float,
        budget: tuple[list[str], list[Any]] | None = None,
        source: str | None = None,
    ) -> bool:
        """What one call taught: unused tokens back, a pause, the circuit's count. True if it opened the circuit.

        A call that used `used_tokens` gives back the rest of its booking; a failed one (outcome
        `fail`/`neutral`, no usage) gives back all of it: a booking never outlives its call.
        `budget`: the call's budget settlement (worker.limits.budgets `settlement`), in the same script."""
        script, keys, args = self.settle_call(
            model,
            booked_tokens=booked_tokens,
            used_tokens=used_tokens,
            outcome=outcome,
            pause_s=pause_s,
            budget=budget,
            source=source,
        )
        return bool(await script(keys=keys, args=args))

    def settle_call(
        self,
        model: str,
        *,
        booked_tokens: int,
        used_tokens: int | None,
        outcome: str,
        pause_s: float,
        budget: tuple[list[str], list[Any]] | None = None,
        source: str | None = None,
    ) -> tuple[AsyncScript, list[str], list[Any]]:
        """The `settle` script call, to send in one round trip with others (worker.process.scripts)."""
        s = self.settings
        if used_tokens is not None:
            refund = booked_tokens - used_tokens
        else:
            refund = 0 if outcome == "ok" else booked_tokens
        args = [
            refund,
            self.intervals(model)[1],
            self._global[1],
            outcome,
            int(pause_s * 1000),
            s.circuit_failures,
            int(s.circuit_window_s * 1000),
            int(s.circuit_open_s * 1000),
            SETTLED_MARK_MS,
            *(budget[1] if budget else ()),
        ]
        # this settlement's id, applied once: the budget reservation's own id when the call has
        # one (a second settlement of the same call, sent by any path, then adds nothing), else a
        # fresh one (a resent command still carries it)
        reservation_id = str(budget[1][0]) if budget else ""
        mark = settled_key(reservation_id or os.urandom(10).hex())  # 20 hex digits, as uuid4's were
        keys = [model_key(model), GLOBAL_LIMIT, mark, *(budget[0] if budget else ())]
        quota_keys, quota_args = self.source_quota(source)
        if quota_keys:  # its tokens back on the source's schedule too
            keys, args = keys + quota_keys, [*args, "@source", quota_args[3]]
        return self._settle, keys, args


def _tpm(limit: RateLimit | None) -> float:
    return (limit.tpm or 0) if limit else 0


def _number(value: float | None) -> str:
    return f"{value:.0f}" if value is not None and value == int(value) else str(value)
