"""The per-day spend records (by model, source, batch, route; worker.contract.store's call script), the
spend report (`llm-router spend`) against the metrics, the exporter and the simulator, and the
credits gauge through a 402 outage."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.registry import CollectorRegistry
from redis import Redis as SyncRedis

from harness.processes import settings_env
from harness.wait import wait_until_async
from producers.api import Producer
from tests.helpers import run_worker, sim_admin
from worker.contract.keys import (
    BATCHES,
    CREDITS,
    SPEND_BY,
    batch_key,
    budget_day_key,
    spend_by_key,
    spend_saved_key,
    today,
    usage_key,
)
from worker.contract.models import Attempt, Usage
from worker.contract.settings import BudgetConfig, Settings
from worker.contract.store import ResultStore
from worker.limits import budgets
from worker.observe.exporter import QueueCollector, month_days
from worker.observe.spend import days_back, read_day, report
from worker.spend_cli import render

CLI = Path(sys.executable).parent / "llm-router"


def samples(name: str) -> dict[tuple, float]:
    found: dict[tuple, float] = {}
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def summed(before: dict, after: dict, label: str) -> dict[str, float]:
    """The increase of a counter since `before`, summed by one label."""
    out: dict[str, float] = {}
    for key, value in after.items():
        d = value - before.get(key, 0.0)
        if d:
            name = dict(key)[label]
            out[name] = out.get(name, 0.0) + d
    return out


def exporter_values(settings, name: str, label: str) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(QueueCollector(settings))
    return {
        s.labels[label]: s.value for family in registry.collect() for s in family.samples if s.name == name and s.value
    }


async def test_a_call_counts_once_per_day_by_model_source_batch_and_route(redis):
    store = ResultStore(redis, ttl_s=60, spend_ttl_s=3 * 86400)
    call = Attempt(model="gpt-4.1", ok=True, latency_s=0.1, cost=0.25, call_id="c1")
    tags = {"source": "billing", "batch": "batch_" + "a" * 32, "route": "cheap"}
    usage = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15)
    assert await store.record_call("j1", call, 7.5, usage, tags)
    assert not await store.record_call("j1", call, 7.5, usage, tags)  # the same call again: not counted
    failed = Attempt(model="gpt-4.1", ok=False, latency_s=0.1, call_id="c2")  # no cost, no usage: a call all the same
    assert await store.record_call("j2", failed, None, None, {"source": "search"})
    day = today()
    for by, name in (("model", "gpt-4.1"), ("source", "billing"), ("batch", tags["batch"]), ("route", "cheap")):
        lines = await read_day(redis, by, day)
        assert lines[name].usd == 0.25 and lines[name].calls == (2 if by == "model" else 1), by
        assert (lines[name].prompt_tokens, lines[name].completion_tokens) == (10, 5), by
        assert 3 * 86400 - 5 <= await redis.ttl(spend_by_key(by, day)) <= 3 * 86400  # SPEND_RETENTION_DAYS
        assert 3 * 86400 - 5 <= await redis.ttl(usage_key(by, day)) <= 3 * 86400
    models = await read_day(redis, "model", day)
    assert models["gpt-4.1"].calls == 2 and models["gpt-4.1"].usd == 0.25
    assert (await read_day(redis, "source", day))["search"].calls == 1
    assert set(await read_day(redis, "route", day)) == {"cheap"}  # a call without a route is not kept by route
    assert float(await redis.hget(CREDITS, "remaining")) == 7.5
    assert await store.spend() == {"gpt-4.1": 0.25}  # all-time total unchanged in shape
    with pytest.raises(ValueError, match="by: 'team'"):
        await read_day(redis, "team", day)


async def test_the_report_sums_days_and_keeps_the_window(redis):
    store = ResultStore(redis, ttl_s=60)
    await store.record_call("j", Attempt(model="gpt-4o", ok=True, latency_s=0, cost=1.0, call_id="a"), None)
    old = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()
    await redis.hset(spend_by_key("model", old), mapping={"gpt-4o": 2.0, "qwen-max": 0.5})
    await redis.hset(usage_key("model", old), mapping={"calls|gpt-4o": 4, "calls|qwen-max": 1})
    await redis.hset(spend_saved_key(old), mapping={"gpt-4o": 0.75})  # the response cache's record
    week = await report(redis, 7, "model")
    assert week.days == days_back(7) and week.days[-1] == today() and len(week.days) == 7
    assert [(r.name, r.usd, r.calls, r.saved_usd) for r in week.rows] == [
        ("gpt-4o", 3.0, 5, 0.75),
        ("qwen-max", 0.5, 1, 0.0),
    ]
    assert week.total.usd == 3.5 and week.total.calls == 6 and week.total.saved_usd == 0.75
    assert [d.usd for d in week.daily] == [0, 0, 0, 2.5, 0, 0, 1.0]
    two = await report(redis, 2, "model")  # the older day is outside the window
    assert two.total.usd == 1.0 and [r.name for r in two.rows] == ["gpt-4o"]
    assert two.budgets is None  # no BUDGETS: no budget lines


async def test_the_reports_budget_use_is_what_the_budgets_enforce(redis, redis_url):
    """Budget use is read from the budgets' own day (BUDGET_TZ) and figures: the day's spend
    records are UTC days and count a call of unknown cost as 0, where a budget counts its worst
    case, so they can disagree with what a budget refuses on."""
    config = BudgetConfig(daily_usd=4, sources={"billing": 1}, models={"gpt-4o": 2, "qwen-max": 1})
    now = datetime(2026, 1, 1, 23, 30, tzinfo=UTC)  # already 2 January in Tokyo
    await redis.hset(spend_by_key("model", "2026-01-01"), mapping={"gpt-4o": 9.0})  # the UTC day's records
    await redis.hset(
        budget_day_key("2026-01-02"),
        mapping={
            "global:spent": 3.0,
            "global:reserved": 0.5,
            "model:gpt-4o:spent": 1.5,
            "source:billing:reserved": 0.25,
        },
    )
    found = await report(redis, 1, "model", config, budget_tz="Asia/Tokyo", now=now)
    assert found.days == ["2026-01-01"] and found.total.usd == 9.0  # the rows stay UTC days
    use = found.as_json()["budgets"]
    assert [(b["scope"], b["name"], b["limit_usd"], b["spent_usd"], b["reserved_usd"], b["used"]) for b in use] == [
        ("global", "", 4.0, 3.0, 0.5, 0.75),
        ("source", "billing", 1.0, 0.0, 0.25, 0.0),
        ("model", "gpt-4o", 2.0, 1.5, 0.0, 0.75),
        ("model", "qwen-max", 1.0, 0.0, 0.0, 0.0),
    ]
    assert found.as_json()["budget_day"] == "2026-01-02" and found.as_json()["budget_timezone"] == "Asia/Tokyo"
    # the exporter's gauges (what the alerts watch) show the same figures
    settings = Settings(redis_url=redis_url, budgets=config, budget_tz="Asia/Tokyo", _env_file=None)
    with SyncRedis.from_url(redis_url) as sync:
        families = list(budgets.families(sync, settings, now.timestamp()))
    gauges = {(s.name, s.labels["scope"], s.labels["name"]): s.value for f in families for s in f.samples}
    for b in use:
        assert gauges[("llm_router_budget_spent_usd", b["scope"], b["name"])] == b["spent_usd"]
        assert gauges[("llm_router_budget_reserved_usd", b["scope"], b["name"])] == b["reserved_usd"]
    # a batch's budget is a scope too: each batch in progress with one, by its id
    batch = "batch_" + "b" * 32
    for batch_id, status, budget in ((batch, "in_progress", True), ("batch_" + "c" * 32, "completed", True)):
        fields = {"status": status, "budget_limit": 2.0, "budget_spent": 0.5, "budget_reserved": 0.125}
        await redis.hset(batch_key(batch_id), mapping=fields if budget else {"status": status})
        await redis.zadd(BATCHES, {batch_id: 1})
    await redis.hset(batch_key("batch_" + "d" * 32), mapping={"status": "in_progress"})  # no budget
    await redis.zadd(BATCHES, {"batch_" + "d" * 32: 2})
    use = (await report(redis, 1, "model", config, budget_tz="Asia/Tokyo", now=now)).as_json()["budgets"]
    assert [(b["scope"], b["name"], b["limit_usd"], b["spent_usd"], b["reserved_usd"]) for b in use][4:] == [
        ("batch", batch, 2.0, 0.5, 0.125)
    ]
    with SyncRedis.from_url(redis_url) as sync:
        families = list(budgets.families(sync, settings, now.timestamp()))
    gauges = {(s.name, s.labels["scope"], s.labels["name"]): s.value for f in families for s in f.samples}
    assert gauges[("llm_router_budget_spent_usd", "batch", "")] == 0.5  # the gauge: their sum, name ''
    text = render(found.as_json())
    assert "budgets, 2026-01-02 (Asia/Tokyo)" in text and "3.000000 of 4.00 USD (75.0 %; 0.500000 reserved)" in text


async def test_report_metrics_exporter_and_simulator_agree(settings, sim, tmp_path):
    """Jobs of three sources, one without, a batch and a failure through a worker: the report by
    model and by source equals the worker's counters, the exporter's per-day gauges and what the
    simulator charged; by batch it equals the batch's record; the CLI prints the same report."""
    names = (
        "llm_router_spend_usd_total",
        "llm_router_tokens_total",
        "llm_router_upstream_request_duration_seconds",
        "llm_router_cache_saved_usd_total",
    )
    before = {n: samples(n if n.endswith("_total") else n + "_count") for n in names}
    async with Producer(settings.redis_url, queue_name=settings.queue_name, source="billing") as producer:
        await producer.chat("gpt-4.1", "one")
        await producer.chat("gpt-4o-mini", "two", max_tokens=20)
        await producer.chat("gemini-2.0-flash", "three", source="search")
        await producer.chat("claude-3-sonnet", "streamed", stream=True, source="search")
        await producer.compare(["gpt-4o", "qwen-max"], "both")
        await producer.chat("no-such-model", "fails", fallbacks=[])
        await producer.chat("route:fast", "routed")  # a built-in route
        await producer.chat("gpt-4o-mini", "same question", temperature=0)  # a miss, called ...
        await producer.chat("gpt-4o-mini", "same question", temperature=0)  # ... and a hit: saved, not spent
        lines = [
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}
            for i in range(3)
        ]
        for i, line in enumerate(lines):
            line["body"]["messages"] = [{"role": "user", "content": f"line {i}"}]
            line["body"]["llm_router"] = {"source": "nightly"}
        batch = await producer.batches.submit(lines)
        await run_worker(settings)
        record = await producer.batches.get(batch.id)
        assert record is not None
        by_model = await report(producer.redis, 1, "model")
        by_source = await report(producer.redis, 1, "source")
        by_batch = await report(producer.redis, 1, "batch")
        by_route = await report(producer.redis, 1, "route")
    after = {n: samples(n if n.endswith("_total") else n + "_count") for n in names}
    charged = sim_admin(sim, "/_sim/stats")["charged_total"]
    assert by_model.total.usd == pytest.approx(charged) and charged > 0
    assert by_source.total.usd == pytest.approx(charged)

    spend = "llm_router_spend_usd_total"
    metric_by_model = summed(before[spend], after[spend], "model")
    metric_by_source = summed(before[spend], after[spend], "source")
    report_by_model = {r.name: r.usd for r in by_model.rows if r.usd}
    report_by_source = {r.name: r.usd for r in by_source.rows if r.usd}
    assert report_by_source.keys() == {"billing", "search", "nightly"}
    assert report_by_model == pytest.approx(metric_by_model)
    assert report_by_source == pytest.approx(metric_by_source)
    assert report_by_model == pytest.approx(exporter_values(settings, "llm_router_spend_today_usd", "model"))
    assert report_by_source == pytest.approx(
        exporter_values(settings, "llm_router_spend_today_by_source_usd", "source")
    )
    assert sum(exporter_values(settings, "llm_router_spend_month_usd", "model").values()) == pytest.approx(charged)
    # calls: every upstream call (the failed one too); tokens: as counted
    latency = "llm_router_upstream_request_duration_seconds"
    calls = summed(before[latency], after[latency], "model")
    assert {r.name if r.name in calls else "other": r.calls for r in by_model.rows} == calls
    tokens = summed(before["llm_router_tokens_total"], after["llm_router_tokens_total"], "direction")
    assert by_model.total.prompt_tokens == tokens["prompt"] and by_model.total.completion_tokens == tokens["completion"]
    saved = summed(before["llm_router_cache_saved_usd_total"], after["llm_router_cache_saved_usd_total"], "model")
    assert by_model.total.saved_usd == pytest.approx(sum(saved.values())) and saved.keys() == {"gpt-4o-mini"}
    assert [r.saved_usd for r in by_model.rows if r.name == "gpt-4o-mini"] == [pytest.approx(saved["gpt-4o-mini"])]
    # by route: the routed job's call, under the route's name
    assert [(r.name, r.calls) for r in by_route.rows] == [("fast", 1)] and by_route.rows[0].usd > 0
    # by batch: the batch's own record
    assert [(r.name, r.calls) for r in by_batch.rows] == [(record.id, 3)]
    assert by_batch.rows[0].usd == pytest.approx(record.cost_usd)

    env = {**os.environ, **settings_env(settings)}
    run = await asyncio.to_thread(
        subprocess.run, [str(CLI), "spend", "--days", "1", "--by", "source", "--json"], capture_output=True, env=env
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == by_source.as_json()
    text = await asyncio.to_thread(subprocess.run, [str(CLI), "spend", "--by", "model"], capture_output=True, env=env)
    assert text.returncode == 0 and b"spend by model" in text.stdout and b"gpt-4o-mini" in text.stdout
    assert text.stdout.count(b"\n") >= 7 + 3  # a row per day of the default 7
    bad = await asyncio.to_thread(subprocess.run, [str(CLI), "spend", "--by", "team"], capture_output=True, env=env)
    assert bad.returncode == 2 and b"--by" in bad.stderr


async def test_the_credits_gauge_shows_what_the_gateway_last_said_through_a_402(settings, sim):
    def gauge():
        registry = CollectorRegistry()
        registry.register(QueueCollector(settings))
        return (
            registry.get_sample_value("llm_router_credits_remaining_usd"),
            registry.get_sample_value("llm_router_credits_updated_timestamp_seconds"),
        )

    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        await producer.chat("gpt-4o-mini", "before")
        await run_worker(settings)
        remaining, _ = gauge()
        assert 99 < remaining < 100  # what the gateway's answer said

        charged_before = sim_admin(sim, "/_sim/stats")["charged_total"]
        sim_admin(sim, "/_sim/credits", {"credits": 0})
        job = await producer.chat("gpt-4o-mini", "during the outage")
        worker = asyncio.create_task(run_worker(settings))
        outage = await wait_until_async(
            lambda: gauge()[0] == 0 and gauge(), 10, "the gauge to say the credits are gone", interval=0.05
        )
        assert outage[1] >= int(datetime.now(UTC).timestamp()) - 5  # and when it was said
        assert not (await producer.redis.exists(f"llm-router:result:{job}"))  # the job waits for credits
        await asyncio.to_thread(sim_admin, sim, "/_sim/credits", {"credits": 50})
        await worker
        assert (await producer.wait(job, 5)).status == "succeeded"
    remaining, updated = gauge()
    charged_since = sim_admin(sim, "/_sim/stats")["charged_total"] - charged_before
    assert remaining == pytest.approx(50 - charged_since, abs=1e-6)  # the probe's answer, then the job's
    assert updated >= outage[1]


def test_month_days_run_from_the_first_to_today():
    assert month_days(datetime(2026, 3, 3, 12, tzinfo=UTC).timestamp()) == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert SPEND_BY == ("model", "source", "batch", "route")


def test_a_call_is_kept_under_its_source_batch_and_route():
    from types import SimpleNamespace

    from worker.calls.routing import spend_tags

    line = SimpleNamespace(job_id="batch_" + "c" * 32 + ":0000007", source="nightly", route=None)
    assert spend_tags(line) == {"source": "nightly", "batch": "batch_" + "c" * 32, "route": None}
    plain = SimpleNamespace(job_id="order-42", source=None, route="code")
    assert spend_tags(plain) == {"source": "none", "batch": None, "route": "code"}
