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

Budgets (worker.limits.budgets) ride on the same script (their parts are joined before it): a
call's worst case is checked against every budget that applies and reserved with its slot, or
the call books nothing (`budget`: refused, `budget_wait`: calls in flight hold the rest);
`settle` settles the reservation with the tokens.

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
from ..lua import registry as lua
from ..process.scripts import run_scripts
from . import budgets
from .fair import LineTicket

if TYPE_CHECKING:
    from .budgets import Reservation


# The admission and the settlement (worker/lua/limiter_admit.lua, limiter_settle.lua), each joined
# after its parts. Their own KEYS and ARGV come first, a budget's after them: budget_admit.lua and
# limiter_settle.lua read the budget's from these positions on (tests/unit/test_lua.py).
ADMIT_PARTS = ("fair_line", *budgets.ADMIT_PARTS, "limiter_admit")
SETTLE_PARTS = (*budgets.SETTLE_PARTS, "limiter_settle")
ADMIT_KEYS, ADMIT_ARGS = 3, 9
SETTLE_KEYS, SETTLE_ARGS = 3, 9


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
        self._admit = lua.register(redis, *ADMIT_PARTS, **budgets.CONSTANTS)
        self._settle = lua.register(redis, *SETTLE_PARTS)

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
