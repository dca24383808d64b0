"""The metrics on a real Prometheus (Debian's package) with the shipped config and rules: two
worker processes and the exporter run jobs with successes, failures, 429s and fallbacks; then
every PromQL expression of the dashboard and of the rules is evaluated through the HTTP API,
and the spend Prometheus reports must equal the spend in Redis and what the simulator charged."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml

from harness.processes import LLMRouterProcess, WorkerProcess, settings_env
from harness.prometheus_server import DEPLOY, PrivatePrometheus, prometheus_binaries
from harness.redis_server import free_port
from harness.wait import wait_until_async
from producers.api import Producer
from tests.helpers import API_KEY, sim_admin
from worker.contract.keys import CREDITS, schedule_key

sys.path.insert(0, str(DEPLOY.parent / "grafana"))
from build_dashboard import FEATURE_METRICS, expressions

ALERT_FORM = re.compile(r"^(?P<signal>.+?)\s*(<=|>=|==|!=|<|>)\s*-?[\d.]+$", re.DOTALL)


def rule_expressions() -> list[tuple[str, str]]:
    """(name, PromQL) of every recording rule, and of every alert's signal (its left-hand side)."""
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    found = []
    for rule in (r for g in groups for r in g["rules"]):
        if "record" in rule:
            found += [(rule["record"], rule["expr"]), (rule["record"] + " (recorded)", rule["record"])]
        else:
            found.append((rule["alert"], ALERT_FORM.match(rule["expr"].strip())["signal"]))
    return found


@pytest.fixture
def stack(settings, tmp_path):
    try:
        prometheus_binaries()
    except RuntimeError as exc:
        pytest.fail(f"{exc} (`make test` installs it)")
    ports = [free_port(), free_port()]
    exporter_port = free_port()
    # a schedule whose latest tick (90-150 s ago) was missed: the workers run it once at start-up
    tick = (datetime.now(UTC) - timedelta(seconds=90)).replace(second=0, microsecond=0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first\nsecond\nthird\n")
    schedules_file = tmp_path / "schedules.toml"
    schedules_file.write_text(
        f'[[schedule]]\nname = "nightly"\ncron = "{tick.minute} {tick.hour} * * *"\nprompts = "{prompts}"\n'
        f'template = "Summarise: {{text}}"\nmodel = "gpt-4o-mini"\noutput = "{tmp_path}/out/{{name}}-{{date}}.jsonl"\n'
    )
    base = settings.model_copy(
        update={
            "worker_concurrency": 5,
            "poll_delay_s": 0.02,
            "fallbacks": {"gpt-4.1": ["claude-3-sonnet"]},
            "schedules_file": str(schedules_file),
            "schedule_grace_s": 600,
            "source_weights": {"tests": 1},  # a named source: the exporter's per-source gauges have it
        }
    )
    prom = PrivatePrometheus(
        tmp_path / "prometheus", [f"127.0.0.1:{p}" for p in ports], f"127.0.0.1:{exporter_port}"
    ).start()
    workers = [
        WorkerProcess(base.model_copy(update={"metrics_port": p}), tmp_path / f"w{i}.log") for i, p in enumerate(ports)
    ]
    exporter = LLMRouterProcess(
        "exporter", env={**settings_env(base), "EXPORTER_PORT": str(exporter_port)}, log_path=tmp_path / "exporter.log"
    )
    try:
        yield base, prom
    finally:
        prom.stop()
        exporter.stop()
        for w in workers:
            w.stop()


async def test_dashboard_and_rules_on_a_real_prometheus(stack, sim):
    settings, prom = stack
    await wait_until_async(
        lambda: prom.query("sum(up)") and float(prom.query("sum(up)")[0]["value"][1]) == 3,
        30,
        "Prometheus to scrape two workers and the exporter",
        interval=0.2,
    )
    sim_admin(sim, "/_sim/config", {"latency_ms": 100})  # jobs last long enough for both workers to take some
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": True})  # -> retries, then fallbacks
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "fail_next": [429, 429], "retry_after_s": 0.3})
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        ids = [await producer.chat("gpt-4.1", f"q{i}", source="billing") for i in range(4)]
        ids += [await producer.chat("gpt-4o-mini", f"m{i}", source="search") for i in range(6)]
        ids += [await producer.chat("claude-3-sonnet", f"s{i}", stream=True) for i in range(6)]
        ids += [await producer.chat("no-such-model", "dead", fallbacks=[])]
        ids += [await producer.compare(["gemini-2.0-flash", "qwen-max"], "both?")]
        ids += [await producer.chat("route:fast", "routed")]  # route choices
        ids += [await producer.chat("gpt-4o-mini", "same", temperature=0) for _ in range(2)]  # a cache miss, a hit

        async def all_done():
            scheduled = await producer.redis.hget(schedule_key("nightly"), "last_success")  # its batch completed
            return scheduled and all([await producer.redis.exists(f"llm-router:result:{i}") for i in ids])

        await wait_until_async(all_done, 30, "the jobs to finish", interval=0.1)
        stored = sum((await producer.store.spend()).values())
        credits = float(await producer.redis.hget(CREDITS, "remaining"))
    charged = sim_admin(sim, "/_sim/stats")["charged_total"]
    assert stored == pytest.approx(charged)

    def spend_scraped():
        result = prom.query("sum(llm_router_spend_usd_total)")
        return result and abs(float(result[0]["value"][1]) - charged) < 1e-9

    await wait_until_async(spend_scraped, 15, "Prometheus to scrape the final spend", interval=0.2)
    # Prometheus = Redis = the simulator, summed over two processes
    assert float(prom.query("sum(llm_router_spend_usd_total)")[0]["value"][1]) == pytest.approx(stored, abs=1e-9)
    assert len(prom.query("sum by (instance) (llm_router_jobs_total)")) == 2  # both workers ran jobs

    def credits_scraped():  # the exporter's gauge, scraped after the last call
        result = prom.query("max(llm_router_credits_remaining_usd)")
        return result and float(result[0]["value"][1]) == pytest.approx(credits)

    await wait_until_async(credits_scraped, 15, "Prometheus to scrape the credits Redis holds", interval=0.2)
    assert not prom.query('llm_router_upstream_errors_total{model="no-such-model"}')  # bounded: "other"
    for target in prom.get("/api/v1/targets")["activeTargets"]:
        assert API_KEY not in httpx.get(target["scrapeUrl"]).text  # the key never reaches metrics
    assert prom.query('llm_router_upstream_errors_total{model="other", error_class="not_found"}')

    # budgets are not used by this run: their series do not exist yet
    every = expressions() + rule_expressions()
    exprs = [(t, e) for t, e in every if not any(f in e for f in FEATURE_METRICS)]

    def grafana(expr: str) -> str:  # the dashboard's variables at their defaults (All)
        return expr.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$source", ".*")

    def without_data():
        return [f"{title}: {expr}" for title, expr in exprs if not prom.query(grafana(expr))]

    # the rules need an evaluation or two after the last scrape; then every expression has data
    empty: list[str] = []

    def all_have_data():
        empty[:] = without_data()
        return not empty

    for _title, expr in every:
        prom.query(grafana(expr))  # each one parses and runs (a feature's may be empty yet)
    await wait_until_async(
        all_have_data, 15, lambda: "every expression to have data; without data:\n" + "\n".join(empty), interval=0.5
    )
    rules = [r for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]]
    shipped = sum(len(g["rules"]) for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"])
    assert len(rules) == shipped and all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
