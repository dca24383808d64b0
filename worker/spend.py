"""The spend report: per-day spend, calls, tokens and cache savings, read back from the records
the workers keep in Redis (worker.store's call script), by model, source, batch or route.

The records are per UTC day and kept SPEND_RETENTION_DAYS:

    llm-router:spend:day:<day>          model -> USD (the exporter's llm_router_spend_today_usd)
    llm-router:spend:<by>:<day>         source | batch | route name -> USD
    llm-router:usage:<by>:<day>         calls|<name>, prompt|<name>, completion|<name> -> count
    llm-router:spend:saved:<day>        model -> USD the response cache saved

Each call is counted once, when it is first recorded, in the same script that adds it to the
metric `llm_router_spend_usd_total`'s Redis twin, so the report and the metrics agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from .keys import SPEND_BY, spend_by_key, spend_saved_key, usage_key
from .serde import as_text

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
    scope: str  # global | source | model
    name: str
    limit_usd: float
    spent_usd: float

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
    budgets: list[BudgetUse] | None = field(default=None)  # today's use of each configured daily budget

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
            out["budgets"] = [{**_rounded(asdict(b)), "used": round(b.used, 4)} for b in self.budgets]
        return out


def days_back(n: int, now: datetime | None = None) -> list[str]:
    """The last `n` UTC days, today included, oldest first."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return [(today - timedelta(days=i)).isoformat() for i in range(n - 1, -1, -1)]


async def read_day(redis: Redis, by: str, day: str) -> dict[str, Line]:
    """One day's lines by `by` (SPEND_BY); by model with the cache's savings."""
    if by not in SPEND_BY:
        raise ValueError(f"by: {by!r} is not one of {', '.join(SPEND_BY)}")
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(spend_by_key(by, day))
        pipe.hgetall(usage_key(by, day))
        pipe.hgetall(spend_saved_key(day))
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
    if by == "model":
        for name, usd in saved.items():
            line(as_text(name)).saved_usd = float(usd)
    return lines


async def report(redis: Redis, days: int, by: str, budgets: Any = None, now: datetime | None = None) -> Report:
    """Spend, calls, tokens and cache savings over the last `days` UTC days, by `by`; with
    `budgets` (the BUDGETS setting), today's use of each daily budget."""
    window = days_back(days, now)
    rows: dict[str, Line] = {}
    daily: list[Line] = []
    by_model_today: dict[str, Line] = {}
    for day in window:
        models = await read_day(redis, "model", day)
        lines = models if by == "model" else await read_day(redis, by, day)
        for name, one in lines.items():
            rows.setdefault(name, Line(name)).add(one)
        total = Line(day)
        for one in models.values():
            total.add(one)
        daily.append(total)
        by_model_today = models
    total = Line("total")
    for d in daily:
        total.add(d)
    ordered = sorted(rows.values(), key=lambda r: (-r.usd, r.name))
    use = None
    if budgets is not None:
        sources = await read_day(redis, "source", window[-1])
        use = budget_use(_as_dict(budgets), daily[-1].usd, by_model_today, sources)
    return Report(by, window, ordered, daily, total, use)


def budget_use(
    budgets: dict[str, Any], today_usd: float, models: dict[str, Line], sources: dict[str, Line]
) -> list[BudgetUse]:
    """Today's spend against each daily budget of BUDGETS: global, per source, per model."""
    found = []
    if budgets.get("daily_usd") is not None:
        found.append(BudgetUse("global", "daily", float(budgets["daily_usd"]), today_usd))
    for scope, spent in (("source", sources), ("model", models)):
        for name, limit in sorted((budgets.get(scope + "s") or {}).items()):
            usd = _limit(limit)
            if usd is not None:
                found.append(BudgetUse(scope, name, usd, spent[name].usd if name in spent else 0.0))
    return found


def _limit(value: Any) -> float | None:
    """A budget's daily USD: a number, or an object with `daily_usd`."""
    if isinstance(value, dict):
        value = value.get("daily_usd")
    elif hasattr(value, "daily_usd"):
        value = value.daily_usd
    return None if value is None else float(value)


def _as_dict(budgets: Any) -> dict[str, Any]:
    if hasattr(budgets, "model_dump"):
        return dict(budgets.model_dump())
    return dict(budgets or {})


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 10) if isinstance(v, float) else v for k, v in d.items()}
