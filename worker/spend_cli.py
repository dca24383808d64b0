"""`llm-router spend` (an operator verb, beside worker.observe.spend):

    llm-router spend [--days 7] [--by model|source|batch|route] [--json]

Spend, calls, tokens and cache savings of the last N UTC days, by model, source, batch or
route, every day's total, and today's use of each daily budget (BUDGETS, when set; today in
BUDGET_TZ, as the budgets count it): the numbers
the metrics show, read from the per-day records the workers keep in Redis.
"""

from __future__ import annotations

import json
from typing import Any

import click

from .cli import run
from .contract.keys import SPEND_BY
from .contract.settings import load_settings


@click.group()
def cli() -> None:
    """Spend verbs."""


@cli.command()
@click.option("--days", type=click.IntRange(1, 3660), default=7, show_default=True, help="UTC days, today included")
@click.option(
    "--by", "by", type=click.Choice(SPEND_BY), default="model", show_default=True, help="one row per model, source, ..."
)
@click.option("--json", "as_json", is_flag=True, help="the whole report as JSON")
def spend(days: int, by: str, as_json: bool) -> None:
    """Spend, calls, tokens and cache savings per day, by model, source, batch or route."""
    from .contract.connections import async_redis
    from .observe.spend import report

    async def main() -> int:
        settings = load_settings()
        redis = async_redis(settings.redis_url)
        try:
            # today's use of each daily budget, when BUDGETS sets any (worker.limits.budgets)
            budgets = settings.budgets if settings.budgets.configured else None
            found = await report(redis, days, by, budgets, settings.budget_tz)
        finally:
            await redis.aclose()
        if as_json:
            click.echo(json.dumps(found.as_json(), indent=2))
        else:
            click.echo(render(found.as_json()))
        return 0

    run(main())


COLUMNS = (
    ("usd", "USD", "{:.6f}"),
    ("calls", "calls", "{}"),
    ("prompt_tokens", "prompt tok", "{}"),
    ("completion_tokens", "completion tok", "{}"),
    ("saved_usd", "cache saved USD", "{:.6f}"),
)


def render(report: dict[str, Any]) -> str:
    """The report as text tables: by name, per day, budgets."""
    days = report["days"]
    out = [f"spend by {report['by']}, {days[0]} .. {days[-1]} (UTC days)"]
    rows = [(r["name"], r) for r in report["rows"]] or [("(none)", {})]
    out += _table(report["by"], [*rows, ("total", report["total"])])
    out += ["", *_table("day", [(d["day"], d) for d in report["daily"]])]
    if "budgets" in report:
        out += [
            "",
            f"budgets, {report['budget_day']} ({report['budget_timezone']}): spent (reserved by calls in flight)",
        ]
        if not report["budgets"]:
            out.append("  (BUDGETS sets no daily budget)")
        for b in report["budgets"]:
            out.append(
                f"  {b['scope']:<7} {b['name'] or '-':<24} {b['spent_usd']:>12.6f} of {b['limit_usd']:.2f} USD"
                f" ({b['used'] * 100:.1f} %; {b['reserved_usd']:.6f} reserved)"
            )
    return "\n".join(out)


def _table(head: str, rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    width = max([len(head)] + [len(name) for name, _ in rows])
    lines = [f"{head:<{width}}" + "".join(f"  {title:>16}" for _, title, _ in COLUMNS)]
    for name, row in rows:
        cells = "".join(f"  {fmt.format(row.get(key, 0)):>16}" for key, _, fmt in COLUMNS)
        lines.append(f"{name:<{width}}{cells}")
    return lines
