"""The spend report: per-day spend, calls, tokens and cache savings, read back from the records
the workers keep in Redis (worker.contract.store's call script), by model, source, batch or route.

The records are per UTC day and kept SPEND_RETENTION_DAYS (budget use is the budgets' own
figures, `llm-router:budget:day:<day>`, for today in BUDGET_TZ: worker.limits.budgets):

    llm-router:spend:day:<day>          model -> USD (the exporter's llm_router_spend_today_usd)
    llm-router:spend:<by>:<day>         source | batch | route name -> USD
    llm-router:usage:<by>:<day>         calls|<name>, prompt|<name>, completion|<name> -> count
    llm-router:spend:saved:<day>        model -> USD the response cache saved
    llm-router:spend:source-model:<day>, usage:source-model:<day>, spend:saved-source-model:<day>
                                        the same by source and model together (`<source>|<model>`)

Each call is counted once, when it is first recorded, in the same script that adds it to the
metric `llm_router_spend_usd_total`'s Redis twin, so the report and the metrics agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from ..contract.keys import (
    BATCHES,
    SPEND_BY,
    SPEND_RECORDS,
    batch_key,
    budget_day_key,
    saved_source_model_key,
    spend_by_key,
    spend_saved_key,
    usage_key,
)
from ..contract.serde import as_text
from ..limits.budgets import BATCH_FIELDS, MAX_BATCHES_READ, batch_use, daily_use, day_of

if TYPE_CHECKING:
    from ..contract.settings import BudgetConfig

USAGE_FIELDS = {"calls": "calls", "prompt": "prompt_tokens", "completion": "completion_tokens"}


@dataclass
class Line:
    """Spend, calls, tokens and cache savings of one name (or one day, or the total)."""

    name: str
    usd: float = 0.0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    saved_usd: float = 0.0

    def add(self, other: Line) -> None:
        self.usd += other.usd
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.saved_usd += other.saved_usd


@dataclass
class BudgetUse:
    """A daily budget's use, as the budgets count it (worker.limits.budgets): its day in BUDGET_TZ, the
    real cost of settled calls (an unknown cost as its worst case) and what calls in flight hold."""

    scope: str  # global | source | model | batch
    name: str  # the configured source or model, the batch id; '' for global (the metrics' label)
    limit_usd: float
    spent_usd: float
    reserved_usd: float

    @property
    def used(self) -> float:
        return self.spent_usd / self.limit_usd if self.limit_usd else 0.0


@dataclass
class Report:
    by: str
    days: list[str]  # oldest first, UTC
    rows: list[Line]  # by `by`, the largest spend first
    daily: list[Line]  # every call of each day (by model), oldest first
    total: Line
    # today's use of each configured daily budget, then each batch in progress with a budget
    budgets: list[BudgetUse] | None = field(default=None)
    budget_day: str | None = None  # the day they count: today in BUDGET_TZ
    budget_tz: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "by": self.by,
            "days": self.days,
            "timezone": "UTC",
            "rows": [_rounded(asdict(r)) for r in self.rows],
            "daily": [{"day": d.name, **_rounded(asdict(d))} for d in self.daily],
            "total": _rounded(asdict(self.total)),
        }
        for d in out["daily"]:
            del d["name"]
        del out["total"]["name"]
        if self.budgets is not None:
            out["budget_day"], out["budget_timezone"] = self.budget_day, self.budget_tz
            out["budgets"] = [{**_rounded(asdict(b)), "used": round(b.used, 4)} for b in self.budgets]
        return out


def days_back(n: int, now: datetime | None = None) -> list[str]:
    """The last `n` UTC days, today included, oldest first."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return [(today - timedelta(days=i)).isoformat() for i in range(n - 1, -1, -1)]


async def read_day(redis: Redis, by: str, day: str) -> dict[str, Line]:
    """One day's lines by `by` (SPEND_RECORDS: SPEND_BY, or `source-model`, lines named
    `<source>|<model>`); by model, source, and source and model, with the cache's savings."""
    if by not in SPEND_RECORDS:
        raise ValueError(f"by: {by!r} is not one of {', '.join(SPEND_BY)}")
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(spend_by_key(by, day))
        pipe.hgetall(usage_key(by, day))
        pipe.hgetall(saved_source_model_key(day) if by in ("source", "source-model") else spend_saved_key(day))
        spend, usage, saved = await pipe.execute()
    lines: dict[str, Line] = {}

    def line(name: str) -> Line:
        return lines.setdefault(name, Line(name))

    for name, usd in spend.items():
        line(as_text(name)).usd = float(usd)
    for key, count in usage.items():
        what, _, name = as_text(key).partition("|")
        if what in USAGE_FIELDS:
            setattr(line(name), USAGE_FIELDS[what], int(count))
    if by in ("model", "source-model"):
        for name, usd in saved.items():
            line(as_text(name)).saved_usd = float(usd)
    elif by == "source":  # a source's savings: its models' (`<source>|<model>`) together
        for name, usd in saved.items():
            line(as_text(name).partition("|")[0]).saved_usd += float(usd)
    return lines


async def source_report(redis: Redis, days: int, source: str, now: datetime | None = None) -> Report:
    """One source's spend, calls, tokens and cache savings over the last `days` UTC days, by
    model (rows) and by day (`daily`), from the records by source and model together (kept from
    the release that added them: older days show nothing here)."""
    window = days_back(days, now)
    rows: dict[str, Line] = {}
    daily: list[Line] = []
    prefix = f"{source}|"
    for day in window:
        total = Line(day)
        for name, one in (await read_day(redis, "source-model", day)).items():
            if name.startswith(prefix):
                one.name = name.removeprefix(prefix)
                rows.setdefault(one.name, Line(one.name)).add(one)
                total.add(one)
        daily.append(total)
    total = Line("total")
    for d in daily:
        total.add(d)
    return Report("model", window, sorted(rows.values(), key=lambda r: (-r.usd, r.name)), daily, total)


async def report(
    redis: Redis,
    days: int,
    by: str,
    budgets: BudgetConfig | None = None,
    budget_tz: str = "UTC",
    now: datetime | None = None,
) -> Report:
    """Spend, calls, tokens and cache savings over the last `days` UTC days, by `by`; with
    `budgets` (the BUDGETS setting), today's use of each daily budget, read from the budgets' own
    records for today in `budget_tz` (BUDGET_TZ): what they refuse on, and the exporter shows."""
    window = days_back(days, now)
    rows: dict[str, Line] = {}
    daily: list[Line] = []
    for day in window:
        models = await read_day(redis, "model", day)
        lines = models if by == "model" else await read_day(redis, by, day)
        for name, one in lines.items():
            rows.setdefault(name, Line(name)).add(one)
        total = Line(day)
        for one in models.values():
            total.add(one)
        daily.append(total)
    total = Line("total")
    for d in daily:
        total.add(d)
    ordered = sorted(rows.values(), key=lambda r: (-r.usd, r.name))
    found = Report(by, window, ordered, daily, total)
    if budgets is not None:
        found.budget_day, found.budget_tz = day_of(budget_tz, None if now is None else now.timestamp()), budget_tz
        figures = await redis.hgetall(budget_day_key(found.budget_day))  # type: ignore[misc]  # redis-py types commands as sync-or-async
        found.budgets = [BudgetUse(*row) for row in daily_use(budgets, figures) + await _batches(redis)]
    return found


async def _batches(redis: Redis) -> list[tuple[str, str, float, float, float]]:
    """The budgets of the batches in progress (the newest MAX_BATCHES_READ), each by its id."""
    batch_ids = await redis.zrevrange(BATCHES, 0, MAX_BATCHES_READ - 1)
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id in batch_ids:
            pipe.hmget(batch_key(as_text(batch_id)), BATCH_FIELDS)
        fields = await pipe.execute()
    return batch_use(batch_ids, fields)


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 10) if isinstance(v, float) else v for k, v in d.items()}
