"""Metrics: bounded labels, what a worker counts (against Redis and the simulator), and the
exporter's queue gauges read from the real redis-server."""

import json
import time

import pytest
from prometheus_client import REGISTRY
from prometheus_client.registry import CollectorRegistry

from producers.api import Producer
from tests.helpers import run_worker, sim_admin
from worker.contract.keys import CREDITS, GATE
from worker.contract.settings import Settings
from worker.observe.exporter import QueueCollector
from worker.observe.metrics import OTHER, Labels


def samples(name: str) -> dict[tuple, float]:
    """{label values: value} of one metric's samples in this process."""
    found = {}
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def delta(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def test_label_values_are_bounded():
    s = Settings(metric_models=["gpt-4.1"], fallbacks={"gpt-4o": ["claude-3-sonnet"]}, _env_file=None)
    labels = Labels(s, max_sources=2)
    assert labels.model("gpt-4.1") == "gpt-4.1" and labels.model("claude-3-sonnet") == "claude-3-sonnet"
    assert labels.model("gpt-4.1-typo") == OTHER and labels.model("x" * 500) == OTHER
    assert [labels.source(n) for n in ("billing", "search", "third", "billing", None)] == [
        "billing",
        "search",
        OTHER,
        "billing",
        "none",
    ]
    fixed = Labels(Settings(metric_sources=["billing"], _env_file=None))
    assert fixed.source("billing") == "billing" and fixed.source("anything") == OTHER


async def test_a_worker_counts_spend_tokens_errors_and_fallbacks(settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": True})
    names = [
        "llm_router_spend_usd_total",
        "llm_router_fallbacks_total",
        "llm_router_upstream_errors_total",
        "llm_router_jobs_total",
        "llm_router_tokens_total",
        "llm_router_retries_total",
    ]
    before = {n: samples(n) for n in names}
    async with Producer(settings.redis_url, queue_name=settings.queue_name, source="billing") as producer:
        await producer.chat("gpt-4.1", "falls back", fallbacks=["claude-3-sonnet"])
        await producer.chat("no-such-model", "fails", fallbacks=[])
        await producer.chat("gemini-2.0-flash", "fine", source="search")
        await run_worker(settings)
        stored = await producer.store.spend()
    d = {n: delta(before[n], samples(n)) for n in names}
    charged = sim_admin(sim, "/_sim/stats")["charged_total"]
    assert sum(d["llm_router_spend_usd_total"].values()) == pytest.approx(charged)
    assert sum(stored.values()) == pytest.approx(charged)
    assert d["llm_router_spend_usd_total"][(("kind", "chat"), ("model", "gemini-2.0-flash"), ("source", "search"))] > 0
    assert d["llm_router_fallbacks_total"] == {(("from_model", "gpt-4.1"), ("to_model", "claude-3-sonnet")): 1}
    errors = d["llm_router_upstream_errors_total"]
    assert errors[(("error_class", "server"), ("model", "gpt-4.1"))] == settings.attempts_per_model
    assert errors[(("error_class", "not_found"), ("model", OTHER))] == 1  # not its raw name
    assert d["llm_router_retries_total"] == {(("model", "gpt-4.1"),): settings.attempts_per_model - 1}
    jobs = d["llm_router_jobs_total"]
    assert (
        jobs[(("kind", "chat"), ("outcome", "succeeded"))] == 2 and jobs[(("kind", "chat"), ("outcome", "failed"))] == 1
    )
    assert not any("no-such-model" in str(k) for n in names for k in d[n])


async def test_exporter_reads_the_queue_gauges_from_redis(settings, redis):
    now = time.time()
    await redis.hset(CREDITS, mapping={"remaining": 42.5, "updated_at": now - 10})
    await redis.zadd(
        settings.queue_name,
        {"ready-old": int((now - 30) * 1000), "ready-new": int(now * 1000), "later": int((now + 600) * 1000)},
    )
    await redis.hset("llm-router:dlq", mapping={"dead1": "{}", "dead2": "{}"})
    await redis.hset(
        f"llm-router:spend:day:{time.strftime('%Y-%m-%d', time.gmtime())}",
        mapping={"gpt-4.1": 0.5, "mystery-model": 0.25, "another-mystery": 0.25},
    )
    await redis.set(GATE, json.dumps({"reason": "credits", "message": "out", "model": "gpt-4.1", "since": now}))
    registry = CollectorRegistry()
    registry.register(QueueCollector(settings))
    value = registry.get_sample_value
    assert value("llm_router_exporter_redis_up") == 1
    assert value("llm_router_credits_remaining_usd") == 42.5
    assert value("llm_router_credits_updated_timestamp_seconds") == pytest.approx(now - 10)
    assert value("llm_router_queue_depth") == 2 and value("llm_router_queue_scheduled") == 1
    assert 29 <= value("llm_router_queue_oldest_job_age_seconds") <= 35
    assert value("llm_router_dead_letters") == 2
    assert value("llm_router_spend_today_usd", {"model": "gpt-4.1"}) == 0.5
    assert value("llm_router_spend_today_usd", {"model": OTHER}) == 0.5  # bounded, and summed
    assert value("llm_router_queue_paused", {"reason": "credits"}) == 1
    assert value("llm_router_queue_paused", {"reason": "auth"}) == 0


def test_exporter_says_when_redis_is_unreachable():
    from harness.redis_server import free_port

    registry = CollectorRegistry()
    registry.register(QueueCollector(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", _env_file=None)))
    assert registry.get_sample_value("llm_router_exporter_redis_up") == 0
    assert registry.get_sample_value("llm_router_queue_depth") is None
