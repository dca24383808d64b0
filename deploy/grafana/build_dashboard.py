"""Builds deploy/grafana/dashboards/llm-router.json: the dashboard is code, the JSON is its output.

    python deploy/grafana/build_dashboard.py          # rewrite the JSON
    python deploy/grafana/build_dashboard.py --check  # exit 1 if the JSON is not what this builds

The tests run --check, and evaluate every expression here on a real Prometheus.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "llm-router.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
WIDTH = 24


# Metrics whose series exist only once the feature is used: budgets (BUDGETS, a batch's budget).
# Their panels are empty until then (the tests skip them for data, not for running).
FEATURE_METRICS = ("llm_router_budget_",)
# The dashboard's template variables, as spend panels filter on them.
SPEND_FILTER = '{model=~"$model", source=~"$source"}'
DAY = "1d"


def target(expr: str, legend: str = "", ref: int = 0) -> dict[str, Any]:
    t = {"refId": chr(ord("A") + ref), "expr": expr, "legendFormat": legend or "__auto", "datasource": DS}
    if f"[{DAY}]" in expr:
        t["interval"] = DAY  # one point a day: each bar is that day's increase
    return t


def panel(
    kind: str, title: str, targets: list[tuple[str, str]], unit: str, w: int, h: int, description: str = ""
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(e, legend, i) for i, (e, legend) in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "gridPos": {"w": w, "h": h},
    }
    if kind == "stat":
        p["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
        }
    else:
        p["options"] = {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi"},
        }
    return p


def stat(title: str, expr: str, unit: str, description: str = "") -> dict[str, Any]:
    return panel("stat", title, [(expr, "")], unit, 4, 4, description)


def graph(title: str, targets: list[tuple[str, str]], unit: str, w: int = 12, description: str = "") -> dict[str, Any]:
    return panel("timeseries", title, targets, unit, w, 8, description)


def daily_bars(
    title: str, targets: list[tuple[str, str]], unit: str, w: int = 12, description: str = ""
) -> dict[str, Any]:
    """Stacked bars, one a day; a series whose legend names a budget is drawn as a line over them."""
    p = panel("timeseries", title, targets, unit, w, 8, description)
    p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}}
    p["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byRegexp", "options": ".*budget.*"},
            "properties": [
                {"id": "custom.drawStyle", "value": "line"},
                {"id": "custom.stacking", "value": {"mode": "none"}},
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
            ],
        }
    ]
    return p


def quantiles(metric: str, by: str, qs: tuple[float, ...]) -> list[tuple[str, str]]:
    return [
        (f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{RATE}])))", f"p{int(q * 100)} {{{{{by}}}}}")
        for q in qs
    ]


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": WIDTH, "h": 1}}


SPEND_RATE = f"sum(rate(llm_router_spend_usd_total{SPEND_FILTER}[1h])) * 3600"
BURN_1H = "scalar(sum(rate(llm_router_spend_usd_total[1h])))"
BUDGET_USE = (
    "max by (scope, name) (llm_router_budget_spent_usd) / max by (scope, name) (llm_router_budget_limit_usd > 0)"
)

PANELS: list[dict[str, Any]] = [
    row("Spend and credits"),
    stat("Spend rate ($/h, last hour)", SPEND_RATE, "currencyUSD"),
    stat(
        "Spent today (UTC)",
        'sum(llm_router_spend_today_usd{model=~"$model"})',
        "currencyUSD",
        "From Redis: every call's cost, this UTC day",
    ),
    stat(
        "Spent this month (UTC)",
        'sum(llm_router_spend_month_usd{model=~"$model"})',
        "currencyUSD",
        "From Redis: this UTC month to date (llm-router spend --days 31 gives the days)",
    ),
    stat("Credits remaining", "max(llm_router_credits_remaining_usd)", "currencyUSD", "As AIsa last reported"),
    stat(
        "Credits run out in",
        f"max(llm_router_credits_remaining_usd) / {BURN_1H}",
        "s",
        "Time to empty at the last hour's burn rate (alert: LLMRouterCreditsRunOutWithin24h under 24 h)",
    ),
    stat(
        "Credits reported",
        "time() - max(llm_router_credits_updated_timestamp_seconds)",
        "s",
        "Seconds since AIsa last reported the credits (a 402 reports 0 credits)",
    ),
    daily_bars(
        "Spend per model per day (USD)",
        [
            (f"sum by (model) (increase(llm_router_spend_usd_total{SPEND_FILTER}[{DAY}]))", "{{model}}"),
            ('max(llm_router_budget_limit_usd{scope="global"})', "global daily budget"),
        ],
        "currencyUSD",
        description="Each bar: a day's spend (Prometheus's increase over the day); the dashed line: BUDGETS daily_usd",
    ),
    daily_bars(
        "Spend per source per day (USD)",
        [
            (f"sum by (source) (increase(llm_router_spend_usd_total{SPEND_FILTER}[{DAY}]))", "{{source}}"),
            ('max by (name) (llm_router_budget_limit_usd{scope="source", name=~"$source"})', "budget {{name}}"),
        ],
        "currencyUSD",
        description="Each bar: a day's spend by the calling service; dashed: each source's daily budget",
    ),
    graph(
        "Spend per model ($/h)",
        [(f"sum by (model) (rate(llm_router_spend_usd_total{SPEND_FILTER}[{RATE}])) * 3600", "{{model}}")],
        "currencyUSD",
    ),
    graph(
        "Spend per producer ($/h)",
        [(f"sum by (source) (rate(llm_router_spend_usd_total{SPEND_FILTER}[{RATE}])) * 3600", "{{source}}")],
        "currencyUSD",
    ),
    graph(
        "Spent today by source (UTC, from Redis)",
        [('max by (source) (llm_router_spend_today_by_source_usd{source=~"$source"})', "{{source}}")],
        "currencyUSD",
        w=8,
    ),
    graph(
        "Credits remaining, and in 24 h at this rate",
        [
            ("max(llm_router_credits_remaining_usd)", "remaining"),
            ("predict_linear(llm_router_credits_remaining_usd[1h], 86400)", "in 24 h"),
        ],
        "currencyUSD",
        w=8,
    ),
    graph(
        "Credits time-to-empty at the current burn rate",
        [
            (f"max(llm_router_credits_remaining_usd) / {BURN_1H}", "last hour's rate"),
            (
                f"max(llm_router_credits_remaining_usd) / scalar(sum(rate(llm_router_spend_usd_total[{RATE}])))",
                "current rate",
            ),
        ],
        "s",
        w=8,
    ),
    row("Budgets, cache, routes"),
    graph(
        "Budget used (share of the limit)",
        [(BUDGET_USE, "{{scope}} {{name}}")],
        "percentunit",
        w=8,
        description="Spent / limit per budget scope (alerts: 80 % of a daily budget, and spent)",
    ),
    graph(
        "Budget spent, reserved and limit (USD)",
        [
            ("max by (scope, name) (llm_router_budget_spent_usd)", "spent {{scope}} {{name}}"),
            ("max by (scope, name) (llm_router_budget_reserved_usd)", "reserved {{scope}} {{name}}"),
            ("max by (scope, name) (llm_router_budget_limit_usd)", "limit {{scope}} {{name}}"),
        ],
        "currencyUSD",
        w=8,
        description="Reserved: the worst case of the calls in flight, settled to their real cost when they end",
    ),
    graph(
        "Budget refusals",
        [(f"sum by (scope, name) (increase(llm_router_budget_refusals_total[{RATE}]))", "{{scope}} {{name}}")],
        "short",
        w=8,
        description="Jobs refused with error class `budget` (dead-lettered: replay them when the budget resets)",
    ),
    graph(
        "Cache hit ratio by model",
        [
            (
                f"sum by (model) (rate(llm_router_cache_hits_total[{RATE}])) / (sum by (model) "
                f"(rate(llm_router_cache_hits_total[{RATE}])) + sum by (model) "
                f"(rate(llm_router_cache_misses_total[{RATE}])))",
                "{{model}}",
            )
        ],
        "percentunit",
        w=8,
    ),
    daily_bars(
        "Cache savings per model per day (USD)",
        [(f'sum by (model) (increase(llm_router_cache_saved_usd_total{{model=~"$model"}}[{DAY}]))', "{{model}}")],
        "currencyUSD",
        w=8,
    ),
    graph(
        "Route choices/s by route and model",
        [(f"sum by (route, model) (rate(llm_router_route_choices_total[{RATE}]))", "{{route}} → {{model}}")],
        "reqps",
        w=8,
    ),
    row("Latency"),
    graph(
        "Upstream latency by model",
        quantiles("llm_router_upstream_request_duration_seconds", "model", (0.5, 0.95, 0.99)),
        "s",
    ),
    graph(
        "Time to first token by model (streams)",
        quantiles("llm_router_time_to_first_token_seconds", "model", (0.5, 0.95, 0.99)),
        "s",
    ),
    graph(
        "Job duration, enqueue to result, by kind",
        quantiles("llm_router_job_duration_seconds", "kind", (0.5, 0.95)),
        "s",
        w=WIDTH,
    ),
    row("Throughput and errors"),
    graph(
        "Tokens/s by model",
        [(f"sum by (model, direction) (rate(llm_router_tokens_total[{RATE}]))", "{{model}} {{direction}}")],
        "short",
    ),
    graph(
        "Jobs/s by outcome",
        [(f"sum by (kind, outcome) (rate(llm_router_jobs_total[{RATE}]))", "{{kind}} {{outcome}}")],
        "reqps",
    ),
    graph(
        "Upstream errors/s by model and class",
        [
            (
                f"sum by (model, error_class) (rate(llm_router_upstream_errors_total[{RATE}]))",
                "{{model}} {{error_class}}",
            )
        ],
        "reqps",
    ),
    graph("429s/s by model", [(f"sum by (model) (rate(llm_router_rate_limited_total[{RATE}]))", "{{model}}")], "reqps"),
    graph(
        "Fallbacks/s",
        [
            (
                f"sum by (from_model, to_model) (rate(llm_router_fallbacks_total[{RATE}]))",
                "{{from_model}} → {{to_model}}",
            )
        ],
        "reqps",
    ),
    graph("Retries/s by model", [(f"sum by (model) (rate(llm_router_retries_total[{RATE}]))", "{{model}}")], "reqps"),
    graph(
        "Wait for the shared rate limit by model",
        quantiles("llm_router_rate_limit_wait_seconds", "model", (0.5, 0.95)),
        "s",
        description="Time calls wait for their slot: high means the limit, not the gateway, sets the pace",
    ),
    graph(
        "Circuits opened",
        [(f"sum by (model) (increase(llm_router_circuit_opened_total[{RATE}]))", "{{model}}")],
        "short",
        description="A model failing often is skipped by every worker for CIRCUIT_OPEN_S",
    ),
    row("Batches and schedules"),
    graph("Batches by status", [("max by (status) (llm_router_batches)", "{{status}}")], "short", w=8),
    graph(
        "Batch lines/s by outcome",
        [(f"sum by (outcome) (rate(llm_router_batch_lines_total[{RATE}]))", "{{outcome}}")],
        "reqps",
        w=8,
    ),
    graph(
        "Bulk lane depth",
        [("max(llm_router_bulk_depth)", "bulk jobs waiting")],
        "short",
        w=8,
        description="Batch lines waiting for the slots interactive jobs leave free",
    ),
    graph(
        "Since each schedule's last success",
        [("time() - max by (schedule) (llm_router_schedule_last_success_timestamp_seconds)", "{{schedule}}")],
        "s",
        description="Time since the schedule's last batch completed and its output was written",
    ),
    graph(
        "Schedules overdue",
        [("max by (schedule) (llm_router_schedule_overdue_seconds)", "{{schedule}}")],
        "s",
        description="How long the batch of a schedule's latest due tick is past its window without completing "
        "(alert: LLMRouterScheduledBatchNotCompleted)",
    ),
    row("Fair share between sources"),
    graph(
        "Jobs waiting by source",
        [("max by (source) (llm_router_source_waiting)", "{{source}}")],
        "short",
        w=8,
        description="Each source's sub-queue (FAIR_SHARE): llm-router sources",
    ),
    graph(
        "Jobs running by source",
        [("max by (source) (llm_router_source_running)", "{{source}}")],
        "short",
        w=8,
        description="Worker slots each source holds: in proportion to SOURCE_WEIGHTS while several wait",
    ),
    graph(
        "Oldest wait by source",
        [("max by (source) (llm_router_source_oldest_wait_seconds)", "{{source}}")],
        "s",
        w=8,
        description="How long each source's front job has waited (alert: LLMRouterSourceStarved)",
    ),
    row("Queue and workers"),
    graph(
        "Queue depth",
        [
            ("max(llm_router_queue_depth)", "ready"),
            ("max(llm_router_queue_interactive_depth)", "ready, interactive (batch lines left out)"),
            ("max(llm_router_queue_scheduled)", "scheduled (deferred)"),
        ],
        "short",
        w=8,
    ),
    graph(
        "Oldest queued job",
        [
            ("max(llm_router_queue_oldest_job_age_seconds)", "age"),
            ("max(llm_router_queue_interactive_oldest_job_age_seconds)", "interactive (what the alert watches)"),
        ],
        "s",
        w=8,
    ),
    graph("In-flight upstream calls", [("sum by (model) (llm_router_upstream_in_flight)", "{{model}}")], "short", w=8),
    stat("Dead letters", "max(llm_router_dead_letters)", "short", "llm-router dlq list"),
    graph(
        "Workers up, queue paused",
        [
            ('sum(up{job="llm-router-worker"})', "workers up"),
            ("max by (reason) (llm_router_queue_paused)", "paused: {{reason}}"),
        ],
        "short",
    ),
    graph(
        "Dead letters dropped, records quarantined",
        [
            (f"sum(increase(llm_router_dead_letters_dropped_total[{RATE}]))", "dead letters dropped"),
            (f"sum by (reason) (increase(llm_router_quarantined_total[{RATE}]))", "quarantined: {{reason}}"),
        ],
        "short",
        description="Dropped: over DLQ_MAX or DLQ_TTL_S. Quarantined: queue entries with no usable id "
        "(llm-router quarantine list)",
    ),
]


def variable(label: str, title: str) -> dict[str, Any]:
    """A multi-value template variable over the spend counter's label, `All` by default (regex .*)."""
    query = f"label_values(llm_router_spend_usd_total, {label})"
    return {
        "name": label,
        "label": title,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{label}-values"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Left to right, wrapping at the dashboard's width; ids in order."""
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > WIDTH:
            x, y, row_h = 0, y + row_h, 0
        p["gridPos"].update(x=x, y=y)
        p["id"] = i
        x, row_h = x + w, max(row_h, h)
    return panels


def dashboard() -> dict[str, Any]:
    return {
        "uid": "llm-router",
        "title": "llm-router: spend, credits, latency, queue",
        "tags": ["llm-router", "aisa"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                    "current": {},
                    "hide": 0,
                },
                variable("model", "Model"),
                variable("source", "Source"),
            ]
        },
        "annotations": {"list": []},
        "panels": layout([json.loads(json.dumps(p)) for p in PANELS]),
    }


def expressions(board: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of the dashboard."""
    board = board or dashboard()
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != render():
            print(f"{OUT} is not what build_dashboard.py builds: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
