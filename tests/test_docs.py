"""The README cannot drift from the code: its tables are checked against the modules they
describe, its CLI lines are parsed by the real CLI, and its Python examples run."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from prometheus_client import Counter, Gauge, Histogram

from harness.processes import WorkerProcess
from llm_router import cli
from worker import keys
from worker import metrics as m
from worker.errors import ERROR_CLASSES
from worker.policy import POLICY, Action
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    """The text of one `## title` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match[1]


def table(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in `text`, header and rule left out."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.M | re.S)


def test_settings_table_is_every_setting_with_its_default():
    defaults: dict[str, str | None] = {}
    for row in table(section("Settings")):
        names, values = ticked(row[0]), ticked(row[1])  # `A` / `B` | `1` / `30`: one default per name
        defaults.update({n: values[i] if len(values) == len(names) else None for i, n in enumerate(names)})
    fields = {name.upper(): field.default for name, field in Settings.model_fields.items()}
    assert set(defaults) == set(fields)
    for name, default in fields.items():
        if isinstance(default, (int, float, str)) and not isinstance(default, bool):
            shown = defaults[name]
            assert shown is not None and (float(shown) if isinstance(default, (int, float)) else shown) == default, name


def test_error_table_is_every_error_class():
    documented = {c for row in table(section("Errors")) for c in ticked(row[0])}
    assert documented == set(ERROR_CLASSES)


# What the README must say for each action of the policy table.
ACTION_WORDS = {
    Action.RETRY_AFTER: "Retry-After",
    Action.BACKOFF: "backoff",
    Action.NEXT_MODEL: "next model",
    Action.FAIL: "fails",
    Action.LARGER_CONTEXT: "CONTEXT_FALLBACKS",
    Action.STOP_QUEUE: "pauses",
    Action.PAUSE_QUEUE: "back to the queue",
}


def test_policy_table_is_the_policy():
    rows = table(section("Resilience: retries, fallbacks, one shared rate limit"))
    documented = {c: row[2] for row in rows for c in ticked(row[0])}
    assert set(documented) == set(POLICY)
    for error_class, action in POLICY.items():
        assert ACTION_WORDS[action] in documented[error_class], error_class


def test_key_table_is_every_key():
    documented = {
        re.sub(r"<[^>]+>", "<>", k)
        for row in table(section("The result record and Redis keys"))
        for k in ticked(row[0])
    }
    in_code = set()
    for name, value in vars(keys).items():
        if name.isupper() and isinstance(value, str) and name != "PREFIX":
            in_code.add(value + "<>" if name.endswith("_PREFIX") else value)
    assert documented == in_code


def test_metrics_table_is_every_worker_metric():
    rows = {ticked(row[0])[0]: row for row in table(section("Metrics and spend monitoring"))}
    defined = [v for v in vars(m).values() if isinstance(v, (Counter, Gauge, Histogram))]
    assert len(rows) == len(defined)
    for metric in defined:
        name = metric._name + ("_total" if isinstance(metric, Counter) else "")
        kind = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}[type(metric)]
        assert name in rows, name
        assert rows[name][1].startswith(kind), name
        labels = ticked(
            re.sub(r"\([^)]*\)", "", rows[name][2])
        )  # `outcome` (`succeeded`/...): the label, not its values
        assert labels == list(metric._labelnames), name
    exporter = set(re.findall(r'"(llm_router_[a-z_]+)"', (ROOT / "worker" / "exporter.py").read_text()))
    assert exporter and all(f"`{name}" in README for name in exporter)


def cli_lines() -> list[list[str]]:
    lines = []
    for block in code_blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("llm-router "):
                lines.append(shlex.split(line)[1:])
    return lines


@pytest.mark.parametrize("args", cli_lines(), ids=" ".join)
def test_cli_lines_parse(args):
    """Every `llm-router ...` line of the README is accepted by the real command."""
    command: click.Command = cli
    ctx, rest = click.Context(cli, info_name="llm-router"), list(args)
    while isinstance(command, click.Group):
        name, *rest = rest
        found = command.get_command(ctx, name)
        assert found is not None, f"llm-router has no verb {name!r}"
        command = found
        ctx = click.Context(command, info_name=name, parent=ctx)
    command.make_context(ctx.info_name, rest, parent=ctx.parent)  # raises on an unknown flag or a bad value


def test_python_examples_run(settings, sim, tmp_path):
    blocks = code_blocks("python")
    assert blocks
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    env = {**os.environ, "REDIS_URL": settings.redis_url, "QUEUE_NAME": settings.queue_name}
    try:
        for block in blocks:
            out = subprocess.run(
                [sys.executable, "-c", block], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
            assert out.returncode == 0, block + out.stderr
    finally:
        worker.stop()
