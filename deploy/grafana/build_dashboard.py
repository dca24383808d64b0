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


def target(expr: str, legend: str = "", ref: int = 0) -> dict[str, Any]:
    return {"refId": chr(ord("A") + ref), "expr": expr, "legendFormat": legend or "__auto", "datasource": DS}


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


def quantiles(metric: str, by: str, qs: tuple[float, ...]) -> list[tuple[str, str]]:
    return [
        (f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{RATE}])))", f"p{int(q * 100)} {{{{{by}}}}}")
        for q in qs
    ]


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": WIDTH, "h": 1}}


SPEND_RATE = "sum(rate(llm_router_spend_usd_total[1h])) * 3600"

PANELS: list[dict[str, Any]] = [
    row("Spend and credits"),
    stat("Spend rate ($/h, last hour)", SPEND_RATE, "currencyUSD"),
    stat(
        "Spent today (UTC)",
        "sum(llm_router_spend_today_usd)",
        "currencyUSD",
        "From Redis: every call's cost, this UTC day",
    ),
    stat("Credits remaining", "max(llm_router_credits_remaining_usd)", "currencyUSD", "As AIsa last reported"),
    stat(
        "Credits run out in",
        "max(llm_router_credits_remaining_usd) / scalar(sum(rate(llm_router_spend_usd_total[1h])))",
        "s",
        "At the last hour's burn rate",
    ),
    stat(
        "Credits reported",
        "time() - max(llm_router_credits_updated_timestamp_seconds)",
        "s",
        "Seconds since AIsa last reported the credits",
    ),
    stat("Dead letters", "max(llm_router_dead_letters)", "short"),
    graph(
        "Spend per model ($/h)",
        [(f"sum by (model) (rate(llm_router_spend_usd_total[{RATE}])) * 3600", "{{model}}")],
        "currencyUSD",
    ),
    graph(
        "Spend per producer ($/h)",
        [(f"sum by (source) (rate(llm_router_spend_usd_total[{RATE}])) * 3600", "{{source}}")],
        "currencyUSD",
    ),
    graph(
        "Credits remaining, and in 24 h at this rate",
        [
            ("max(llm_router_credits_remaining_usd)", "remaining"),
            ("predict_linear(llm_router_credits_remaining_usd[1h], 86400)", "in 24 h"),
        ],
        "currencyUSD",
        w=WIDTH,
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
    row("Queue and workers"),
    graph(
        "Queue depth",
        [("max(llm_router_queue_depth)", "ready"), ("max(llm_router_queue_scheduled)", "scheduled (deferred)")],
        "short",
        w=8,
    ),
    graph("Oldest queued job", [("max(llm_router_queue_oldest_job_age_seconds)", "age")], "s", w=8),
    graph("In-flight upstream calls", [("sum by (model) (llm_router_upstream_in_flight)", "{{model}}")], "short", w=8),
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
                }
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
