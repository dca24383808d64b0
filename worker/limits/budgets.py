"""Budgets: no call starts unless its worst case fits every budget that applies.

Scopes (BUDGETS, and a batch's own budget set when it is submitted):

    global   BUDGETS.daily_usd          every call, per day (BUDGET_TZ)
    source   BUDGETS.sources[<source>]  the calls of jobs with that `source`, per day
    model    BUDGETS.models[<model>]    the calls to that model, per day
    batch    budget_usd at submit       the calls of the batch's lines, for the batch's life

Reserve, then settle. Before a call the worker reserves its worst case (the most prompt tokens
its body can be billed, worker.limits.tokens, + the completion cap,
`max_tokens`/`max_completion_tokens` or else BUDGET_DEFAULT_MAX_TOKENS, which is then sent with
the call, times `n`, at the model's worst-case price) against every scope that applies, in the
same Lua script that books the call's rate-limit slot (worker/lua/budget_admit.lua, a part of
worker.limits.limiter's admission): the scopes are checked (spent + reserved + worst case <= limit)
and the reservation written with the booking, or nothing is (an admission sent again with the
same reservation id, by a client retrying after a lost answer, reserves nothing more). After the
call, `settle` releases the reservation and adds the real cost (`usage.cost`; a failed call
costs 0 if nothing can have been billed, a 4xx/429 or a connect error, else its worst case: a
timeout, a drop after the request was sent, a 5xx, a cut stream, a cancel in flight (worker.calls.errors
`billable`); an unknown cost counts as the worst case) to each scope's spend: once, because it
deletes the reservation it settles.
A reservation carries a deadline (LEASE_S), renewed by its worker's keeper while the call runs:
a worker that dies leaves reservations that the next script run past their deadline releases
(`reap`). A late settle of a reaped reservation (a worker stalled past its lease) still adds its
cost, once: the reaped record is kept a day as a tombstone.

Worst-case prices (USD per token, input and output apart): the model's PRICES entry, trusted as
given (unless a bill has proved it low, `<model>|low`: then the larger of it and the learned
price); for a model not in PRICES, the price learned from the gateway's bills; none yet: the
larger of BUDGET_UNKNOWN_PRICE and the skill's published price of its family (worker.contract.pricing; a
family's figure is approximate, so never alone a ceiling). Learning: a call of p prompt and c completion
tokens billed `cost` proves input price <= cost/p and output price <= cost/c (prices are not
negative), so the smallest such bounds seen are upper bounds; a bill the bounds cannot explain
(the price went up) replaces them.

A call whose worst case is 0 (a free model) is never refused: a spent budget blocks only what
would spend. A refused call ends its job with error class `budget` (no retry); a fallback is
tried only if its worst case is below the refused one (never a pricier model).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, overload
from zoneinfo import ZoneInfo

from prometheus_client.core import GaugeMetricFamily
from redis.asyncio import Redis
from redis.commands.core import AsyncScript, Script

from ..batches import record as batches
from ..contract.keys import BATCHES, BUDGET_DEADLINES, BUDGET_LEARNED, BUDGET_RESERVATIONS, batch_key, budget_day_key
from ..contract.models import BudgetInfo, ErrorInfo, ModelAnswer
from ..contract.pricing import table_price
from ..contract.serde import as_text
from ..lua import registry as lua
from ..observe import metrics as m

if TYPE_CHECKING:
    import redis

    from ..contract.settings import BudgetConfig, Price, Settings

# A batch's budget lives in its record (worker.batches.record): `budget_limit`, `budget_spent`, `budget_reserved`.
BATCH_PREFIX = "budget_"
# A reaped reservation is kept this long, so a settle that comes after still counts its cost once.
TOMBSTONE_MS = 24 * 3600 * 1000
# Reservations past their deadline released per script run (the rest at the next runs).
REAP_BATCH = 100
# Learned bounds are raised by this fraction: a bill rounded down never makes them too low.
LEARN_MARGIN = 1e-6

# ---------------------------------------------------------------- Lua (worker/lua/budget_*.lua)

# The parts of worker.limits.limiter's admission and settle scripts (worker/lua/budget_admit.lua
# and budget_settle.lua say what they read), and the constants they need.
ADMIT_PARTS = ("budget_reap", "budget_admit")
SETTLE_PARTS = ("budget_settle",)
CONSTANTS = {"TOMBSTONE_MS": TOMBSTONE_MS, "REAP_BATCH": REAP_BATCH}
# A settlement's arguments (budget_settle's `a`), after the limiter settle's own when it rides on it.
SETTLE_ARGS = 9


@overload
def keeper(client: Redis) -> AsyncScript: ...
@overload
def keeper(client: redis.Redis) -> Script: ...
def keeper(client: Any) -> Any:
    """The keeper's script (worker/lua/budget_keep.lua): renew the given reservations, reap the overdue."""
    return lua.register(client, "budget_reap", "budget_keep", **CONSTANTS)


# ---------------------------------------------------------------- Python side


@dataclass
class Scope:
    kind: str  # one of worker.observe.metrics.BUDGET_SCOPES
    name: str  # the configured key; the batch id for a batch
    key: str
    prefix: str
    limit: float | None  # None: the hash's own `<prefix>limit` (a batch's)
    day: str | None = None

    @property
    def label(self) -> str:
        """The metric label `name`: the configured key, '' for global and for batches (unbounded ids)."""
        return "" if self.kind in ("global", "batch") else self.name


@dataclass
class Plan:
    """One call's budget request: the scopes that may apply and the script's keys and arguments."""

    model: str
    scopes: list[Scope]
    keys: list[str]
    args: list[Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:20])


@dataclass
class Reservation:
    """What the admit script booked: settle it exactly once."""

    id: str
    worst_usd: float


def refusal_error(info: BudgetInfo) -> ErrorInfo:
    where = f"{info.scope} budget" + (f" {info.name!r}" if info.name else "") + (f" of {info.day}" if info.day else "")
    message = (
        f"the call's worst case ${info.needed_usd:.6f} does not fit the {where}: ${info.limit_usd:.6f}, "
        f"${info.spent_usd:.6f} spent, ${info.reserved_usd:.6f} reserved by calls in flight; "
        "lower max_tokens, raise the budget, or replay the job when it resets"
    )
    return ErrorInfo(type="budget", message=message, budget=info)


class Budgets:
    """A worker's side of the budgets: plan a call's reservation, settle it, keep its own alive."""

    def __init__(self, redis: Redis, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.settings = settings
        self.config = settings.budgets
        self.tz = ZoneInfo(settings.budget_tz)
        self.clock = clock
        # this process's reservations -> when made (monotonic): the keeper renews their deadlines
        self.live: dict[str, float] = {}
        # no call outlives its job (JOB_TIMEOUT_S cancels it, and settles): one older was lost by
        # a bug, so it is no longer renewed and the reaper releases it
        self.max_age_s = settings.job_timeout_s + 60
        self._settle = lua.register(redis, "budget_settle", "budget_settle_alone")
        self._keep = keeper(redis)
        self.lease_ms = int(settings.lease_s * 1000)
        # a day's figures are kept as long as the other per-day spend records
        self.day_ttl_s = settings.spend_retention_days * 24 * 3600
        unknown = settings.budget_unknown_price
        self._unknown = (unknown.input / 1000, unknown.output / 1000)

    def day(self, now: float | None = None) -> str:
        return datetime.fromtimestamp(self.clock() if now is None else now, self.tz).strftime("%Y-%m-%d")

    def scopes(self, model: str, source: str | None, job_id: str) -> list[Scope]:
        """Every scope that may apply to a call (a batch's applies if the batch has a budget)."""
        c, out = self.config, []
        day: str | None = None
        if c.configured:
            day = self.day()
            key = budget_day_key(day)
            if c.daily_usd is not None:
                out.append(Scope("global", "", key, "global:", c.daily_usd, day))
            if source is not None and source in c.sources:
                out.append(Scope("source", source, key, f"source:{source}:", c.sources[source], day))
            if model in c.models:
                out.append(Scope("model", model, key, f"model:{model}:", c.models[model], day))
        line = batches.line_of(job_id)
        if line is not None:
            out.append(Scope("batch", line[0], batch_key(line[0]), BATCH_PREFIX, None))
        return out

    async def applies(self, model: str, source: str | None, job_id: str) -> bool:
        """Whether a budget applies to a call (a batch's only if its batch has one: read from Redis)."""
        scopes = self.scopes(model, source, job_id)
        if any(s.limit is not None for s in scopes):
            return True
        for s in scopes:  # a batch's: its record's limit, if it has a budget
            if await self.redis.hget(s.key, s.prefix + "limit") is not None:  # type: ignore[misc]  # redis-py types commands as sync-or-async
                return True
        return False

    def plan(
        self, model: str, source: str | None, job_id: str, bounds: Callable[[], tuple[int, int]], cap: float | None
    ) -> Plan | None:
        """The budget part of a call's admission; None when no budget can apply (nothing to do).
        `bounds` gives the call's (prompt, completion) token bounds: asked only when a budget can
        apply, since the prompt's walks the body the call sends (most calls have no budget)."""
        scopes = self.scopes(model, source, job_id)
        if not scopes and cap is None:
            return None
        prompt, completion = bounds()
        price, unknown = self.prices(model)
        plan = Plan(model, scopes, [], [])
        plan.keys = [BUDGET_RESERVATIONS, BUDGET_DEADLINES, BUDGET_LEARNED, *(s.key for s in scopes)]
        plan.args = [
            len(scopes),
            model,
            prompt,
            completion,
            "" if price is None else repr(price.input / 1000),
            "" if price is None else repr(price.output / 1000),
            repr(unknown[0]),
            repr(unknown[1]),
            plan.id,
            self.lease_ms,
            "" if cap is None else repr(cap),
            self.day_ttl_s,
        ]
        for s in scopes:
            plan.args += [s.prefix, "" if s.limit is None else repr(s.limit)]
        return plan

    def prices(self, model: str) -> tuple[Price | None, tuple[float, float]]:
        """`model`'s worst-case prices for the admit script: (its PRICES entry, trusted as given, or
        None; the per-token price while no bill has taught one). A model not in PRICES is priced
        the larger of BUDGET_UNKNOWN_PRICE and its family's published price until its first bill:
        a family's price is a rough figure (claude-3-sonnet's $0.01/1K is below its real output
        price), not a ceiling."""
        price = self.settings.prices.get(model)
        family = None if price is not None else table_price(model, {})
        unknown = self._unknown
        if family is not None:
            unknown = (max(unknown[0], family.input / 1000), max(unknown[1], family.output / 1000))
        return price, unknown

    def refused(self, plan: Plan, rest: list[Any]) -> BudgetInfo | None:
        """The admit script's refusal as a BudgetInfo (counted); None: a fallback not cheaper than
        a model refused before (the caller repeats that refusal)."""
        index, limit, spent, reserved, worst = (as_text(x) for x in rest[:5])
        if index == "0":
            return None
        scope = plan.scopes[int(index) - 1]
        m.BUDGET_REFUSALS.labels(scope.kind, scope.label).inc()
        return BudgetInfo(
            scope=scope.kind,
            name=scope.name,
            day=scope.day,
            limit_usd=float(limit),
            spent_usd=round(float(spent), 10),
            reserved_usd=round(max(float(reserved), 0.0), 10),
            needed_usd=round(float(worst), 10),
        )

    def booked(self, plan: Plan, worst: Any) -> Reservation | None:
        text = as_text(worst) if worst is not None else ""
        if not text:
            return None
        self.live[plan.id] = time.monotonic()
        return Reservation(plan.id, float(text))

    def settlement(
        self, reservation: Reservation | None, model: str, answer: ModelAnswer | None, billable: bool = False
    ) -> tuple[list[str], list[Any]] | None:
        """The settle script's (keys, args) after a call: release its reservation and count what
        it cost (`answer` None: failed or cancelled; it costs 0 when nothing can have been billed,
        its worst case, the reservation kept spent, when it may have been: `billable`, see
        worker.calls.errors); learn the model's price from a gateway bill. None: nothing to do.
        worker.limits.limiter's settle runs it with its own."""
        cost: str = "" if billable and answer is None else "0"  # '': the worst case
        learn, prompt, completion = "0", 0, 0
        if answer is not None and answer.status == "succeeded":
            cost = "" if answer.cost is None else repr(answer.cost)
            if answer.cost is not None and answer.cost_source == "gateway" and answer.usage:
                learn, prompt, completion = "1", answer.usage.prompt_tokens, answer.usage.completion_tokens
        if reservation is None and (learn == "0" or not self.config.configured):
            return None
        if reservation is not None:
            self.live.pop(reservation.id, None)
        # only a PRICES entry is a table price here: a model without one learns from every bill
        price = self.settings.prices.get(model)
        return [BUDGET_RESERVATIONS, BUDGET_DEADLINES, BUDGET_LEARNED], [
            "" if reservation is None else reservation.id,
            cost,
            model,
            prompt,
            completion,
            learn,
            LEARN_MARGIN,
            "" if price is None else repr(price.input / 1000),
            "" if price is None else repr(price.output / 1000),
        ]

    async def settle(
        self, reservation: Reservation | None, model: str, answer: ModelAnswer | None, billable: bool = False
    ) -> None:
        """`settlement`, run on its own."""
        settlement = self.settlement(reservation, model, answer, billable)
        if settlement is not None:
            await self._settle(keys=settlement[0], args=settlement[1])

    async def keep(self) -> int:
        """Renew this process's reservations (the keeper, with the job leases) and release
        expired ones (of dead workers); returns how many were reaped."""
        now = time.monotonic()
        for rid in [r for r, made in self.live.items() if now - made > self.max_age_s]:
            del self.live[rid]
        return int(await self._keep(keys=[BUDGET_RESERVATIONS, BUDGET_DEADLINES], args=[self.lease_ms, *self.live]))


# ---------------------------------------------------------------- the daily budgets' figures


def day_of(tz: str, now: float | None = None) -> str:
    """The day (in the time zone `tz`, BUDGET_TZ) whose hash the daily budgets count in."""
    return datetime.fromtimestamp(time.time() if now is None else now, ZoneInfo(tz)).strftime("%Y-%m-%d")


def daily_use(config: BudgetConfig, day: Mapping[Any, Any]) -> list[tuple[str, str, float, float, float]]:
    """Each daily budget of BUDGETS as (scope, name, limit, spent, reserved) from its day's hash
    (`budget_day_key`, as read): what the admit script checks, the exporter's gauges and the spend
    report show. `name` is the metric label: the configured source or model, '' for global."""
    fields = {as_text(k): float(v) for k, v in day.items()}
    rows = []
    if config.daily_usd is not None:
        rows.append(
            ("global", "", config.daily_usd, fields.get("global:spent", 0.0), fields.get("global:reserved", 0.0))
        )
    for kind, limits in (("source", config.sources), ("model", config.models)):
        for name, limit in sorted(limits.items()):
            prefix = f"{kind}:{name}:"
            rows.append((kind, name, limit, fields.get(prefix + "spent", 0.0), fields.get(prefix + "reserved", 0.0)))
    return [
        (kind, name, limit, round(spent, 10), round(max(reserved, 0.0), 10))
        for kind, name, limit, spent, reserved in rows
    ]


# A batch record's fields that say whether its budget applies and how much of it is used.
BATCH_FIELDS = ["status", BATCH_PREFIX + "limit", BATCH_PREFIX + "spent", BATCH_PREFIX + "reserved"]


def batch_use(batch_ids: list[Any], fields: list[list[Any]]) -> list[tuple[str, str, float, float, float]]:
    """The batches in progress that have a budget, as ("batch", id, limit, spent, reserved), from
    each batch's BATCH_FIELDS (as read, in the order of `batch_ids`)."""
    return [
        ("batch", as_text(batch_id), float(limit), round(float(spent or 0), 10), round(max(float(held or 0), 0.0), 10))
        for batch_id, (status, limit, spent, held) in zip(batch_ids, fields, strict=True)
        if limit is not None and as_text(status) not in batches.FINAL_STATUSES
    ]


# ---------------------------------------------------------------- the exporter's gauges

# The newest batches whose budgets the exporter reads at each scrape.
MAX_BATCHES_READ = 1000


def families(redis: redis.Redis, settings: Settings, now: float | None = None) -> Iterator[GaugeMetricFamily]:
    """llm_router_budget_{limit,reserved,spent}_usd{scope,name} from Redis (one exporter: the
    same figures whatever number of workers). Daily scopes: today in BUDGET_TZ; `batch`: the sum
    over batches in progress with a budget (name '': batch ids are unbounded)."""
    reap = keeper(redis)
    reap(keys=[BUDGET_RESERVATIONS, BUDGET_DEADLINES], args=[int(settings.lease_s * 1000)])
    with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(budget_day_key(day_of(settings.budget_tz, now)))
        pipe.zrevrange(BATCHES, 0, MAX_BATCHES_READ - 1)
        today, batch_ids = pipe.execute()
    with redis.pipeline(transaction=False) as pipe:
        for batch_id in batch_ids:
            pipe.hmget(batch_key(as_text(batch_id)), BATCH_FIELDS)
        batch_rows = pipe.execute() if batch_ids else []
    rows = daily_use(settings.budgets, today)
    in_progress = batch_use(batch_ids, batch_rows)
    if in_progress:
        # their sum: batch ids are unbounded labels
        limits, spents, helds = (
            sum(r[2] for r in in_progress),
            sum(r[3] for r in in_progress),
            sum(r[4] for r in in_progress),
        )
        rows.append(("batch", "", limits, spents, helds))
    out = {
        what: GaugeMetricFamily(name, doc, labels=["scope", "name"]) for what, (name, doc) in m.BUDGET_GAUGES.items()
    }
    for kind, name, limit, spent, reserved in rows:
        out["limit"].add_metric([kind, name], limit)
        out["spent"].add_metric([kind, name], round(spent, 10))
        out["reserved"].add_metric([kind, name], round(max(reserved, 0.0), 10))
    yield from out.values()
