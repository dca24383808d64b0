"""deploy/: the Prometheus config and rules checked and unit-tested by promtool, the dashboard
rebuilt from code, and the compose file's references resolved."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.prometheus_server import prometheus_binaries

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERT_FORM = re.compile(r"^(?P<signal>.+?)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<threshold>-?[\d.]+)$", re.DOTALL)


@pytest.fixture(scope="module")
def promtool():
    try:
        return prometheus_binaries()[1]
    except RuntimeError as exc:
        pytest.fail(f"{exc} (`make test` installs it)")


@pytest.mark.parametrize(
    "args",
    [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]],
)
def test_promtool(promtool, args):
    run = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_alertmanager_config_is_valid_and_prometheus_sends_to_it():
    from harness.alertmanager_server import alertmanager_binary

    try:
        amtool = Path(alertmanager_binary()).with_name("amtool")
    except RuntimeError as exc:
        pytest.fail(f"{exc} (`make test` installs it)")
    config = DEPLOY / "alertmanager" / "alertmanager.yml"
    run = subprocess.run([str(amtool), "check-config", str(config)], capture_output=True, text=True)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr
    receivers = yaml.safe_load(config.read_text())["receivers"]
    assert any(r.get("webhook_configs") for r in receivers)
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    assert targets == ["alertmanager:9093"] and "9093:9093" in compose["alertmanager"]["ports"]


def test_every_prometheus_config_loads_the_rules_and_sends_alerts_to_alertmanager():
    """prometheus.yml (file targets), compose.yml and prometheus-k8s.yml: alerts that fire in any
    of them reach Alertmanager (an `alerting:` block), not only in one."""
    configs = sorted((DEPLOY / "prometheus").glob("*.yml"))
    configs = [c for c in configs if "scrape_configs" in yaml.safe_load(c.read_text())]
    assert {c.name for c in configs} == {"prometheus.yml", "compose.yml", "prometheus-k8s.yml"}
    for config in configs:
        loaded = yaml.safe_load(config.read_text())
        assert loaded["rule_files"] == ["alerts.yml"], config.name
        managers = (loaded.get("alerting") or {}).get("alertmanagers") or []
        assert managers, f"{config.name} has no alerting: block"
        found = [t for m in managers for sc in m.get("static_configs", []) for t in sc["targets"]]
        found += [f"{n}:{sd['port']}" for m in managers for sd in m.get("dns_sd_configs", []) for n in sd["names"]]
        assert found and all(t.endswith(":9093") and "alertmanager" in t for t in found), (config.name, found)


def alert_rules():
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_every_alert_compares_one_signal_with_a_threshold():
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {
        "LLMRouterCreditsLow",
        "LLMRouterCreditsRunOutWithin24h",
        "LLMRouterSpendOverBudget",
        "LLMRouterRateLimitedRatioHigh",
        "LLMRouterErrorRatioHigh",
        "LLMRouterQueueBacklogGrowing",
        "LLMRouterOldestJobTooOld",
        "LLMRouterDeadLettersGrowing",
        "LLMRouterNoWorkerUp",
        "LLMRouterDailyBudget80PercentUsed",
        "LLMRouterBudgetExhausted",
        "LLMRouterSourceStarved",
    } <= names
    for rule in rules:
        assert ALERT_FORM.match(rule["expr"].strip()), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


def test_every_alert_is_exercised_by_the_promtool_tests():
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t.get("exp_alerts")}
    assert {r["alert"] for r in alert_rules()} - {"LLMRouterExporterDown"} <= fired


def test_the_dashboard_json_is_what_the_code_builds():
    run = subprocess.run(
        [sys.executable, str(DEPLOY / "grafana" / "build_dashboard.py"), "--check"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_the_dashboard_is_well_formed():
    import json

    board = json.loads((DEPLOY / "grafana" / "dashboards" / "llm-router.json").read_text())
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}" and p["fieldConfig"]["defaults"]["unit"]
    titles = " ".join(p["title"] for p in panels).lower()
    for needed in (
        "spend per model",
        "spend rate",
        "spent today",
        "credits remaining",
        "run out",
        "latency",
        "first token",
        "tokens/s",
        "jobs/s",
        "errors",
        "429",
        "fallbacks",
        "queue depth",
        "oldest",
        "in-flight",
        "batches by status",
        "batch lines",
        "bulk lane",
        "schedule",
    ):
        assert needed in titles, needed


def test_dashboard_and_rules_use_only_metrics_that_exist():
    from worker.observe import metrics

    exported = {c._name for c in vars(metrics).values() if hasattr(c, "_name") and hasattr(c, "_type")}
    exported |= {
        "llm_router_credits_remaining_usd",
        "llm_router_credits_updated_timestamp_seconds",
        "llm_router_queue_depth",
        "llm_router_queue_scheduled",
        "llm_router_queue_oldest_job_age_seconds",
        "llm_router_dead_letters",
        "llm_router_spend_today_usd",
        "llm_router_queue_paused",
        "llm_router_exporter_redis_up",
    }
    # and every gauge the exporter defines (batches, bulk lane, schedules), budgets' named in worker.observe.metrics
    exported |= set(re.findall(r'"(llm_router_[a-z_]+)"', (ROOT / "worker" / "observe" / "exporter.py").read_text()))
    exported |= {name for name, _doc in metrics.BUDGET_GAUGES.values()}
    text = (DEPLOY / "grafana" / "dashboards" / "llm-router.json").read_text()
    text += (DEPLOY / "prometheus" / "alerts.yml").read_text()
    used = set(re.findall(r"\bllm_router_[a-z_]+", text))
    unknown = {u for u in used if re.sub(r"_(total|bucket|count|sum)$", "", u) not in exported}
    assert not unknown, unknown
    # ...and the exporter really exposes the gauges listed above
    assert "llm_router_queue_oldest_job_age_seconds" in (ROOT / "worker" / "observe" / "exporter.py").read_text()


def test_compose_file_is_valid_compose():
    """Schema and interpolation, by docker-compose itself (these machines run no containers)."""
    import shutil

    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed (`make test` installs it)")
    run = subprocess.run(
        [binary, "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_compose_references_resolve():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "worker", "exporter", "prometheus", "grafana", "alertmanager"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
    for env_file in compose["x-llm-router"]["env_file"]:
        assert (DEPLOY / env_file).exists(), env_file
    import click

    from llm_router.cli import cli

    verbs = set(cli.list_commands(click.Context(cli)))
    for name in ("worker", "exporter", "sim"):
        assert services[name]["command"][0] in verbs
    # the image copies everything the package is built from
    copied = {line.split()[1] for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("COPY")}
    copied |= {
        w
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY")
        for w in line.split()[1:-1]
    }
    import ast
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setup_py = ast.parse((ROOT / "setup.py").read_text())
    (parts,) = [
        ast.literal_eval(n.value)
        for n in setup_py.body
        if isinstance(n, ast.Assign) and ast.unparse(n).startswith("PARTS =")
    ]
    built_from = {*parts, "llm_router", "setup.py", "pyproject.toml", project["project"]["readme"]}
    assert built_from <= copied, built_from - copied
