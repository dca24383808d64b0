"""Reference tables generated from the code at build time (docs/gen/hooks.py puts them in the
pages): settings from the settings model, metrics from their definitions, error classes from
the error hierarchy and the policy table, the CLI from click. One source for each fact."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from . import sources

# "see Budgets" in a description: the page (and heading) that explains it.
SEE = {
    "Budgets": "budgets.md",
    "Response cache": "cache-and-routes.md#response-cache",
    "Routes": "cache-and-routes.md#routes",
    "Schedules": "schedules.md",
    "Webhooks": "webhooks.md",
    "Live streams": "ingress.md#live-streams",
    "Hostile clients": "ingress.md#hostile-clients",
    "Limits": "job-format.md#limits-and-what-a-refusal-looks-like",
    "Past one machine": "operations.md#redis-high-availability",
    "Errors": "resilience.md#error-classes",
    "Fair share": "fair-share.md",
    "Operator console": "console.md",
    "Roles": "ingress.md#roles",
}


def linked(text: str) -> str:
    """`see Budgets` → a link to the page that explains it."""
    for title, target in SEE.items():
        text = re.sub(rf"\bsee {re.escape(title)}\b", f"see [{title}]({target})", text)
    return text


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "—"
    if hasattr(value, "get_secret_value"):
        return "—"
    if hasattr(value, "model_dump"):
        value = value.model_dump(exclude_none=True)
    shown = value if isinstance(value, str) else json.dumps(value)
    if len(shown) > 60:
        count = len(value) if isinstance(value, (dict, list, tuple)) else 0
        return (
            f"built in: {count} entries (`worker/contract/setting_types.py`)"
            if count
            else "built in (`worker/contract/setting_types.py`)"
        )
    return f"`{shown}`"


def settings_table() -> str:
    """Every setting: its environment variable, default and description, from the model."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in sources.settings.Settings.model_fields.items():
        if not field.description:
            raise ValueError(f"setting {name} has no description: give its Field a description")
        rows.append(f"| `{name.upper()}` | {cell(_default(field))} | {cell(linked(field.description))} |")
    return "\n".join(rows)


def _kind(metric: object) -> str:
    return {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}[type(metric)]  # type: ignore[index]


def worker_metrics() -> list[tuple[str, str, list[str], str]]:
    """(name, type, labels, help) of every metric `worker/observe/metrics.py` defines."""
    found = []
    for value in vars(sources.metrics).values():
        if isinstance(value, (Counter, Gauge, Histogram)):
            name = value._name + ("_total" if isinstance(value, Counter) else "")
            found.append((name, _kind(value), list(value._labelnames), value._documentation))
    return found


def exporter_metrics() -> list[tuple[str, str, list[str], str]]:
    """(name, type, labels, help) of every family the exporter serves: collected once from an
    in-memory Redis with every optional part configured (credits, a schedule, budgets)."""
    import fakeredis

    redis = fakeredis.FakeRedis()
    redis.hset("llm-router:credits", mapping={"remaining": 1, "updated_at": 1})
    with tempfile.TemporaryDirectory() as tmp:
        schedules = Path(tmp, "schedules.toml")
        schedules.write_text(
            '[[schedule]]\nname = "doc"\ncron = "0 2 * * *"\ninput = "requests.jsonl"\n', encoding="utf-8"
        )
        settings = sources.settings.Settings(_env_file=None, schedules_file=str(schedules), budgets={"daily_usd": 1})
        collector = sources.exporter.QueueCollector(settings, redis)
        families = list(collector.collect())
    seen: dict[str, tuple[str, str, list[str], str]] = {}
    for family in families:
        labels = list(getattr(family, "_labelnames", ()))
        seen.setdefault(family.name, (family.name, family.type, labels, family.documentation))
    return list(seen.values())


def metrics_table(which: Callable[[], list[tuple[str, str, list[str], str]]]) -> str:
    rows = ["| metric | type | labels | what |", "|---|---|---|---|"]
    for name, kind, labels, doc in which():
        rows.append(f"| `{name}` | {kind} | {', '.join(f'`{label}`' for label in labels)} | {cell(doc)} |")
    return "\n".join(rows)


def error_rows() -> Iterator[tuple[str, str, str, str]]:
    """(class, when, status, what the policy does) for every error class results record."""
    errors, policy = sources.errors, sources.policy
    for error_class in errors.ERROR_CLASSES:
        when = errors.ERROR_WHEN[error_class]
        status = errors.ERROR_STATUS.get(error_class, "—")
        action = policy.POLICY.get(error_class)
        does = policy.ACTION_TEXT[action] if action else errors.NOT_SENT.get(error_class, "")
        yield error_class, when, status, does


def errors_table() -> str:
    rows = ["| error class | when | status | what it does to the job |", "|---|---|---|---|"]
    for error_class, when, status, does in error_rows():
        rows.append(f"| `{error_class}` | {cell(linked(when))} | {cell(status)} | {cell(linked(does))} |")
    return "\n".join(rows)


def cli_reference() -> str:
    """Every verb's usage, help and options, from click (mkdocs-click's renderer)."""
    from mkdocs_click._docs import make_command_docs

    return "\n".join(make_command_docs("llm-router", sources.cli, depth=1, style="plain", list_subcommands=True))


GENERATED: dict[str, Callable[[], str]] = {
    "settings": settings_table,
    "worker-metrics": lambda: metrics_table(worker_metrics),
    "exporter-metrics": lambda: metrics_table(exporter_metrics),
    "errors": errors_table,
    "cli": cli_reference,
}
