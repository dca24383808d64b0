"""Budgets (worker.limits.budgets) on a real redis-server: the reservation made with the rate-limit
booking in one script, settled once, reaped after a dead worker's lease; then end to end through
workers (in-process and `llm-router worker` processes) with the simulator as the source of truth
for the money charged."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest
from fastapi.testclient import TestClient
from redis import Redis as SyncRedis

from harness.processes import llm_router, settings_env
from harness.reply_cutter import ReplyCutter
from harness.wait import wait_until_async
from producers import batch_cli
from producers.http.app import create_app
from tests.helpers import run_worker, sim_admin
from worker.batches import schedules
from worker.contract.keys import BUDGET_LEARNED, BUDGET_RESERVATIONS, budget_day_key
from worker.contract.models import ModelAnswer, Usage
from worker.contract.settings import BudgetConfig, ConfigError, Price, Settings
from worker.limits import tokens
from worker.limits.budgets import Budgets
from worker.limits.limiter import Limiter
from worker.observe import metrics as m
from worker.observe.exporter import QueueCollector

# USD per 1K tokens: 0.001 a token; a call of 100 prompt + 100 completion tokens has a worst case of $0.20.
PER_TOKEN = 0.001
WORST = 0.2
# The simulator's own gpt-4.1 price (sim/catalog.py): with it as the table price the worst case is tight.
SIM_GPT41 = Price(input=0.002, output=0.008)


def budgeted(settings, **config):
    prices = {"m": Price(input=PER_TOKEN * 1000, output=PER_TOKEN * 1000), "free-model": Price(input=0, output=0)}
    return settings.model_copy(update={"budgets": BudgetConfig(**config), "prices": prices})


def plan(limiter, model="m", source=None, job_id="j1", prompt=100, completion=100, cap=None):
    return limiter.budgets.plan(model, source, job_id, lambda: (prompt, completion), cap)


async def day_figures(redis, budgets: Budgets, scope="global:"):
    raw = await redis.hgetall(budget_day_key(budgets.day()))
    fields = {k.decode(): float(v) for k, v in raw.items()}
    return round(fields.get(scope + "spent", 0.0), 9), round(fields.get(scope + "reserved", 0.0), 9)


def succeeded(cost: float, prompt=100, completion=100) -> ModelAnswer:
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    return ModelAnswer(model="m", status="succeeded", cost=cost, cost_source="gateway", usage=usage)


def gauges(settings) -> dict[tuple[str, str, str], float]:
    """The exporter's budget gauges: (metric, scope, name) -> value."""
    collector = QueueCollector(settings, SyncRedis.from_url(settings.redis_url))
    return {
        (f.name, x.labels["scope"], x.labels["name"]): x.value
        for f in collector.collect()
        if f.name.startswith("llm_router_budget_")
        for x in f.samples
    }


# ---------------------------------------------------------------- the scripts


async def test_reserve_waits_on_calls_in_flight_refuses_what_cannot_fit_and_settles_once(redis, settings):
    limiter = Limiter(redis, budgeted(settings, daily_usd=1.0))
    booked = [await limiter.admit("m", 0, 5, plan(limiter)) for _ in range(5)]
    assert [a.status for a in booked] == ["ok"] * 5
    assert all(a.reservation and a.reservation.worst_usd == pytest.approx(WORST) for a in booked)
    assert await day_figures(redis, limiter.budgets) == (0.0, 1.0)
    # fits what is spent, not what the five in flight hold: nothing booked, ask again
    assert (await limiter.admit("m", 0, 5, plan(limiter))).status == "budget_wait"
    for a in booked[:4]:
        await limiter.budgets.settle(a.reservation, "m", succeeded(0.19))
    await limiter.budgets.settle(booked[0].reservation, "m", succeeded(0.19))  # again: counted once
    assert await day_figures(redis, limiter.budgets) == (0.76, 0.2)
    refused_before = m.BUDGET_REFUSALS.labels("global", "")._value.get()
    refused = await limiter.admit("m", 0, 5, plan(limiter, prompt=150))  # a worst case of $0.25
    assert refused.status == "budget" and refused.reservation is None
    info = refused.refusal
    assert (info.scope, info.name, info.day) == ("global", "", limiter.budgets.day())
    assert (info.limit_usd, info.spent_usd, info.reserved_usd, info.needed_usd) == pytest.approx((1.0, 0.76, 0.2, 0.25))
    assert m.BUDGET_REFUSALS.labels("global", "")._value.get() == refused_before + 1
    # a failed call costs nothing: its reservation is given back, the budget is usable again
    await limiter.budgets.settle(booked[4].reservation, "m", None)
    assert await day_figures(redis, limiter.budgets) == (0.76, 0.0)
    assert (await limiter.admit("m", 0, 5, plan(limiter, prompt=150))).status == "budget"
    assert (await limiter.admit("m", 0, 5, plan(limiter))).status == "ok"
    assert not await redis.hexists(BUDGET_RESERVATIONS, booked[4].reservation.id)


async def test_every_scope_that_applies_is_checked_and_charged(redis, settings):
    s = budgeted(settings, daily_usd=10.0, sources={"billing": 0.5}, models={"m": 0.7})
    limiter = Limiter(redis, s)
    a = await limiter.admit("m", 0, 5, plan(limiter, source="billing"))
    b = await limiter.admit("m", 0, 5, plan(limiter, source="billing"))
    assert (a.status, b.status) == ("ok", "ok")
    await limiter.budgets.settle(a.reservation, "m", succeeded(0.2))
    await limiter.budgets.settle(b.reservation, "m", succeeded(0.2))
    refused = await limiter.admit("m", 0, 5, plan(limiter, source="billing"))
    assert (refused.status, refused.refusal.scope, refused.refusal.name) == ("budget", "source", "billing")
    other = await limiter.admit("m", 0, 5, plan(limiter, source="search"))  # not billing's budget
    assert other.status == "ok"
    await limiter.budgets.settle(other.reservation, "m", succeeded(0.2))
    refused = await limiter.admit("m", 0, 5, plan(limiter, source="search"))
    assert (refused.status, refused.refusal.scope, refused.refusal.name) == ("budget", "model", "m")
    assert await day_figures(redis, limiter.budgets) == (0.6, 0.0)
    assert await day_figures(redis, limiter.budgets, "source:billing:") == (0.4, 0.0)
    assert await day_figures(redis, limiter.budgets, "model:m:") == (0.6, 0.0)
    assert (await limiter.admit("n", 0, 5, plan(limiter, model="n"))).status == "ok"  # n has no model budget


async def test_a_dead_workers_reservation_is_released_after_its_lease_and_a_late_settle_counts_once(redis, settings):
    s = budgeted(settings, daily_usd=1.0).model_copy(update={"lease_s": 0.3})
    dead, alive = Limiter(redis, s), Limiter(redis, s)
    held = await dead.admit("m", 0, 5, plan(dead))
    kept = await alive.admit("m", 0, 5, plan(alive))
    for _ in range(4):  # the live worker's keeper renews its own; nobody renews the dead one's
        await asyncio.sleep(0.15)
        await alive.budgets.keep()
    assert await day_figures(redis, alive.budgets) == (0.0, WORST)
    # a worker stalled past its lease finishes after all: its cost still counts, once
    await dead.budgets.settle(held.reservation, "m", succeeded(0.15))
    await dead.budgets.settle(held.reservation, "m", succeeded(0.15))
    await alive.budgets.settle(kept.reservation, "m", succeeded(0.1))
    assert await day_figures(redis, alive.budgets) == (0.25, 0.0)


async def test_a_reservation_older_than_any_job_is_no_longer_renewed(redis, settings):
    s = budgeted(settings, daily_usd=1.0).model_copy(update={"lease_s": 0.3})
    limiter = Limiter(redis, s)
    lost = await limiter.admit("m", 0, 5, plan(limiter))  # its call ended without a settle (a bug)
    limiter.budgets.live[lost.reservation.id] -= s.job_timeout_s + 61
    for _ in range(4):
        await asyncio.sleep(0.15)
        await limiter.budgets.keep()
    assert await day_figures(redis, limiter.budgets) == (0.0, 0.0)
    assert lost.reservation.id not in limiter.budgets.live


async def test_days_reset_in_the_budget_time_zone(redis, settings):
    s = budgeted(settings, daily_usd=0.3).model_copy(update={"budget_tz": "Asia/Tokyo"})
    limiter = Limiter(redis, s)
    now = [1_764_113_400.0]  # 2025-11-25 23:30 UTC: already the 26th in Tokyo
    limiter.budgets.clock = lambda: now[0]
    assert limiter.budgets.day() == "2025-11-26"
    a = await limiter.admit("m", 0, 5, plan(limiter))
    await limiter.budgets.settle(a.reservation, "m", succeeded(0.2))
    assert (await limiter.admit("m", 0, 5, plan(limiter))).status == "budget"
    now[0] += 16 * 3600  # 15:30 UTC on the 26th: the 27th in Tokyo, a new budget
    assert limiter.budgets.day() == "2025-11-27"
    assert (await limiter.admit("m", 0, 5, plan(limiter))).status == "ok"
    assert await redis.ttl(budget_day_key("2025-11-27")) > 300 * 24 * 3600


async def test_a_days_figures_are_kept_spend_retention_days(redis, settings):
    s = budgeted(settings, daily_usd=1.0).model_copy(update={"spend_retention_days": 3})
    limiter = Limiter(redis, s)
    assert (await limiter.admit("m", 0, 5, plan(limiter))).status == "ok"
    assert 2 * 24 * 3600 < await redis.ttl(budget_day_key(limiter.budgets.day())) <= 3 * 24 * 3600


async def test_a_spent_budget_still_lets_a_free_model_run(redis, settings):
    limiter = Limiter(redis, budgeted(settings, daily_usd=0.2))
    a = await limiter.admit("m", 0, 5, plan(limiter))
    await limiter.budgets.settle(a.reservation, "m", succeeded(0.2))
    assert (await limiter.admit("m", 0, 5, plan(limiter))).status == "budget"
    free = await limiter.admit("free-model", 0, 5, plan(limiter, model="free-model"))
    assert free.status == "ok" and free.reservation.worst_usd == 0
    # the gateway billed it after all: counted, and the table price is flagged as proven low
    await limiter.budgets.settle(free.reservation, "free-model", succeeded(0.01))
    assert await day_figures(redis, limiter.budgets) == (0.21, 0.0)
    assert await redis.hget(BUDGET_LEARNED, "free-model|low") == b"1"
    assert (await limiter.admit("free-model", 0, 5, plan(limiter, model="free-model"))).status == "budget"


async def test_prices_are_learned_from_bills_as_upper_bounds(redis, settings):
    s = budgeted(settings, daily_usd=100.0)
    limiter = Limiter(redis, s)
    unknown = s.budget_unknown_price
    first = await limiter.admit("mystery", 0, 5, plan(limiter, model="mystery"))
    assert first.reservation.worst_usd == pytest.approx((100 * unknown.input + 100 * unknown.output) / 1000)
    # true prices 0.002 / 0.008 per 1K: a bill for 100 + 50 tokens
    await limiter.budgets.settle(first.reservation, "mystery", succeeded(0.0006, 100, 50))
    second = await limiter.admit("mystery", 0, 5, plan(limiter, model="mystery"))
    # input <= 0.0006/100, output <= 0.0006/50 per token: above the true prices, far below the default
    assert second.reservation.worst_usd == pytest.approx(100 * 0.0006 / 100 + 100 * 0.0006 / 50, rel=1e-5)
    await limiter.budgets.settle(second.reservation, "mystery", succeeded(0.0006 * 10, 100, 50))  # price x10
    third = await limiter.admit("mystery", 0, 5, plan(limiter, model="mystery"))
    assert third.reservation.worst_usd == pytest.approx(100 * 0.006 / 100 + 100 * 0.006 / 50, rel=1e-5)


async def test_a_model_not_in_prices_is_reserved_at_the_larger_of_the_unknown_and_its_familys_price(redis, settings):
    # claude-3-sonnet-x is of the claude-3-sonnet family ($0.01/1K published) and in no PRICES:
    # the unknown price ($0.075/1K) until a bill; with a lower unknown price set, the family's
    s = budgeted(settings, daily_usd=100.0)
    limiter = Limiter(redis, s)
    model = "claude-3-sonnet-x"
    first = await limiter.admit(model, 0, 5, plan(limiter, model=model))
    assert first.reservation.worst_usd == pytest.approx(200 * 0.075 / 1000)
    low = Limiter(redis, s.model_copy(update={"budget_unknown_price": Price(input=0.001, output=0.02)}))
    mixed = await low.admit(model, 0, 5, plan(low, model=model))
    assert mixed.reservation.worst_usd == pytest.approx((100 * 0.01 + 100 * 0.02) / 1000)
    # a bill teaches its price (learned from every bill: it has no PRICES entry to trust)
    await limiter.budgets.settle(first.reservation, model, succeeded(0.0006, 100, 50))
    second = await limiter.admit(model, 0, 5, plan(limiter, model=model))
    assert second.reservation.worst_usd == pytest.approx(100 * 0.0006 / 100 + 100 * 0.0006 / 50, rel=1e-5)
    # a PRICES entry is trusted as given, even below the unknown price
    priced = Limiter(redis, s.model_copy(update={"prices": {"gpt-4o": Price(input=0.001, output=0.002)}}))
    trusted = await priced.admit("gpt-4o", 0, 5, plan(priced, model="gpt-4o"))
    assert trusted.reservation.worst_usd == pytest.approx((100 * 0.001 + 100 * 0.002) / 1000)


def test_the_unknown_price_is_at_least_the_dearest_of_the_simulators_catalogue():
    from sim.catalog import MODELS

    unknown = Settings(_env_file=None).budget_unknown_price
    assert unknown.input >= max(spec.input_per_1k for spec in MODELS.values())
    assert unknown.output >= max(spec.output_per_1k for spec in MODELS.values())


async def test_a_fallback_no_cheaper_than_a_refused_model_is_refused_without_looking(redis, settings):
    limiter = Limiter(redis, budgeted(settings, models={"m": 0.1}))
    assert (await limiter.admit("m", 0, 5, plan(limiter))).status == "budget"
    # n is in no table nor budget: at the unknown price, 100 + 3000 tokens is $0.2325
    pricier = await limiter.admit("n", 0, 5, plan(limiter, model="n", completion=3000, cap=WORST))
    assert pricier.status == "budget" and pricier.refusal is None  # the caller repeats the first refusal
    cheaper = await limiter.admit("n", 0, 5, plan(limiter, model="n", completion=50, cap=WORST))
    assert cheaper.status == "ok"


# ---------------------------------------------------------------- through a worker and the simulator


@pytest.fixture
async def producer(make_producer, settings):
    return await make_producer(settings, source="billing", own_settings=True)


def stats(sim):
    return sim_admin(sim, "/_sim/stats")


async def test_a_job_that_does_not_fit_fails_budget_unsent_and_is_dead_lettered(producer, settings, sim):
    # PRICES at the skill's published figures (trusted as given); claude-3-opus in none
    prices = {"gpt-4.1": Price(input=0.01, output=0.01), "gemini-2.0-flash": Price(input=0.001, output=0.001)}
    s = settings.model_copy(update={"budgets": BudgetConfig(sources={"billing": 0.002}), "prices": prices})
    job = await producer.chat("gpt-4.1", "hi", max_tokens=1000, fallbacks=["claude-3-opus", "gemini-2.0-flash"])
    await run_worker(s)
    r = await producer.result(job)
    # gpt-4.1: $0.01/1K x 1,000 tokens does not fit; claude-3-opus (unknown price) is pricier, never
    # tried; gemini-2.0-flash ($0.001/1K) fits
    assert r.status == "succeeded" and r.model == "gemini-2.0-flash"
    assert [a.model for a in r.attempts] == ["gemini-2.0-flash"]
    too_big = await producer.chat("gpt-4.1", "hi", max_tokens=5000, fallbacks=["claude-3-opus"])
    await run_worker(s)
    r = await producer.result(too_big)
    assert r.status == "failed" and r.error.type == "budget" and r.attempts == []
    assert (r.error.budget.scope, r.error.budget.name) == ("source", "billing")
    assert r.error.budget.needed_usd > r.error.budget.limit_usd - r.error.budget.spent_usd
    letter = await producer.dead_letters.get(too_big)
    assert letter.error.budget == r.error.budget and letter.job["max_tokens"] == 5000
    assert set(stats(sim)["calls"]) == {"gemini-2.0-flash"}


async def test_settled_after_success_and_failure_to_what_the_gateway_charged(producer, settings, sim, redis):
    # a success settles to its bill; a refusal (a 4xx: nothing can have been billed) to $0; a 5xx
    # may come after the upstream ran and billed (worker.calls.errors `billable`): to its worst case
    claude = Price(input=0.003, output=0.015)
    s = settings.model_copy(
        update={
            "budgets": BudgetConfig(daily_usd=5, sources={"billing": 4}),
            "attempts_per_model": 1,
            "prices": {"claude-3-sonnet": claude},
        }
    )
    sim_admin(sim, "/_sim/config", {"model": "claude-3-sonnet", "down": True})
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o", "error_rates": {"400": 1.0}})
    ok = [await producer.chat("gpt-4.1", f"question {i}", max_tokens=50) for i in range(6)]
    refused = [await producer.chat("gpt-4o", f"question {i}", max_tokens=50, fallbacks=[]) for i in range(2)]
    bad = [await producer.chat("claude-3-sonnet", f"question {i}", max_tokens=50, fallbacks=[]) for i in range(3)]
    await run_worker(s)
    rs = [await producer.result(i) for i in ok + refused + bad]
    assert [r.status for r in rs] == ["succeeded"] * 6 + ["failed"] * 5
    assert [r.error.type for r in rs[6:]] == ["bad_request"] * 2 + ["server"] * 3
    budgets = Budgets(redis, s)
    charged = stats(sim)["charged_total"]
    assert charged > 0
    # each 503'd call's worst case, from the body the simulator received (the bound is its bytes)
    sent = [r["body"] for r in sim_admin(sim, "/_sim/requests")["requests"] if r["body"]["model"] == "claude-3-sonnet"]
    worst = sum((tokens.input_bound(b) * claude.input + 50 * claude.output) / 1000 for b in sent)
    assert len(sent) == 3 and worst > 0
    assert await day_figures(redis, budgets) == (pytest.approx(charged + worst, abs=1e-9), 0.0)
    assert await day_figures(redis, budgets, "source:billing:") == (pytest.approx(charged + worst, abs=1e-9), 0.0)
    assert await redis.hlen(BUDGET_RESERVATIONS) == 0
    samples = gauges(s)  # the exporter publishes the same figures, read from Redis
    assert samples[("llm_router_budget_limit_usd", "global", "")] == 5
    assert samples[("llm_router_budget_spent_usd", "source", "billing")] == pytest.approx(charged + worst)
    assert samples[("llm_router_budget_reserved_usd", "global", "")] == 0


async def test_a_spent_budget_runs_the_free_model_and_a_new_day_the_others(producer, settings, sim, redis):
    prices = {"gpt-4.1": SIM_GPT41, "free-model": Price(input=0, output=0)}
    # a worst case of $0.0005 (90 bytes of body, 40 tokens), a cost of about $0.00009: the second call does not fit
    s = settings.model_copy(update={"budgets": BudgetConfig(daily_usd=0.00055), "prices": prices})
    first = await producer.chat("gpt-4.1", "one two three", max_tokens=40, fallbacks=[])
    await run_worker(s)
    assert (await producer.result(first)).status == "succeeded"
    second = await producer.chat("gpt-4.1", "one two three", max_tokens=40, fallbacks=[])
    free = await producer.chat("free-model", "one two three", max_tokens=40, fallbacks=[])
    await run_worker(s)
    assert (await producer.result(second)).error.type == "budget"
    assert (await producer.result(free)).status == "succeeded"
    assert stats(sim)["calls"] == {"gpt-4.1": 1, "free-model": 1}
    # the next day (BUDGET_TZ) the budget is whole again: the dead letter replays and runs
    day = Budgets(redis, s).day()
    await redis.rename(budget_day_key(day), budget_day_key("2000-01-01"))
    assert await producer.dead_letters.replay(second)
    await run_worker(s)
    assert (await producer.result(second)).status == "succeeded"


async def test_a_call_waits_for_reservations_in_flight_never_falling_back_to_a_pricier_model(producer, settings, sim):
    s = settings.model_copy(update={"prices": {"gpt-4.1": SIM_GPT41}, "worker_concurrency": 2})
    # a worst case of $0.0005: one call in flight leaves too little for a second one
    s = s.model_copy(update={"budgets": BudgetConfig(daily_usd=0.0008)})
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "latency_ms": 1500})
    first = await producer.chat("gpt-4.1", "one two three", max_tokens=40, fallbacks=[])
    second = await producer.chat("gpt-4.1", "one two three", max_tokens=40, fallbacks=["claude-3-opus"], max_wait_s=0)
    await run_worker(s)
    a, b = await producer.result(first), await producer.result(second)
    # the second fits what the first cost ($0.00009), not what it held: it waited (back to the
    # queue: max_wait_s 0) and ran after it, never on claude-3-opus (pricier), never both at once
    assert (a.status, b.status, b.model) == ("succeeded", "succeeded", "gpt-4.1") and b.runs >= 2
    assert stats(sim)["calls"] == {"gpt-4.1": 2} and stats(sim)["peak_concurrency"] == 1


async def test_a_batch_budget_stops_the_batch_with_honest_counts(producer, settings, sim):
    s = settings.model_copy(update={"prices": {"gpt-4.1": SIM_GPT41}, "worker_concurrency": 5})
    text = "word " * 80
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": text}], "max_tokens": 60},
        }
        for i in range(30)
    ]
    budget = 0.006
    batch = await producer.batches.submit(lines, budget_usd=budget)
    assert batch.budget_usd == budget
    in_progress = gauges(s)  # batches in progress with a budget, summed: name '' (batch ids are unbounded)
    assert in_progress[("llm_router_budget_limit_usd", "batch", "")] == budget
    assert in_progress[("llm_router_budget_spent_usd", "batch", "")] == 0
    await run_worker(s)
    assert ("llm_router_budget_limit_usd", "batch", "") not in gauges(s)  # completed
    batch = await producer.batches.get(batch.id)
    counts = batch.request_counts
    charged = stats(sim)["charged_total"]
    per_call = charged / stats(sim)["calls"]["gpt-4.1"]
    assert batch.status == "completed" and counts.total == 30
    assert counts.completed == stats(sim)["calls"]["gpt-4.1"] and counts.completed >= 5
    assert counts.skipped == counts.failed == 30 - counts.completed > 0
    assert charged <= budget and charged > budget - 2 * per_call
    assert batch.budget_spent_usd == pytest.approx(charged) and batch.budget_reserved_usd == 0
    errors = [e async for e in producer.batches.results(batch.id) if e["error"] is not None]
    assert len(errors) == counts.skipped and {e["error"]["code"] for e in errors} == {"budget"}
    shown = batch_cli._summary(batch)  # `batch status`
    assert (
        f"({counts.skipped} skipped: budget)" in shown and f"budget ${batch.budget_spent_usd:.6f} of $0.006000" in shown
    )


# ---------------------------------------------------------------- worker processes


@pytest.fixture
def race_settings(settings):
    return settings.model_copy(
        update={
            "prices": {"gpt-4.1": SIM_GPT41},
            "worker_concurrency": 50,
            "lease_s": 2.0,
            "poll_delay_s": 0.02,
            "max_wait_s": 5,
            "metrics_port": 0,
        }
    )


async def test_the_race_four_processes_of_fifty_never_spend_past_the_budget(producer, race_settings, sim, workers):
    """B + w is never exceeded, and the budget is spent to within a few w when the work exceeds it."""
    sim_admin(sim, "/_sim/config", {"latency_ms": 30})
    text = "word " * 120
    budget = 0.06
    s = race_settings.model_copy(update={"budgets": BudgetConfig(daily_usd=budget)})
    # worst cases from about $0.0017 (690 bytes of body at $0.002/1K, max_tokens 40 at $0.008/1K)
    # to w, about $0.0022 (max_tokens 100)
    ids = [await producer.chat("gpt-4.1", text, max_tokens=40 + 20 * (i % 4), fallbacks=[]) for i in range(200)]
    for _ in range(4):
        workers(s)

    async def finished():
        return all([await producer.redis.exists(f"llm-router:result:{i}") for i in ids])

    await wait_until_async(finished, 120, "every job's result")
    rs = [await producer.result(i) for i in ids]
    refused = [r for r in rs if r.status == "failed"]
    assert {r.error.type for r in refused} == {"budget"} and refused
    w = max(r.error.budget.needed_usd for r in refused)
    charged = stats(sim)["charged_total"]
    assert charged <= budget + w
    assert charged >= budget - 3 * w
    assert len(rs) - len(refused) == stats(sim)["calls"]["gpt-4.1"]
    print(f"race: B={budget:.6f} w={w:.6f} charged={charged:.6f} refused={len(refused)}/{len(rs)}")


async def test_sigkilled_workers_reservations_are_released_after_the_lease(
    producer, race_settings, sim, workers, redis
):
    s = race_settings.model_copy(update={"budgets": BudgetConfig(daily_usd=1.0), "worker_concurrency": 5})
    budgets = Budgets(redis, s)
    sim_admin(sim, "/_sim/config", {"latency_ms": 3000})
    ids = [await producer.chat("gpt-4.1", f"q{i}", max_tokens=100, fallbacks=[]) for i in range(3)]
    first = workers(s)
    await wait_until_async(lambda: stats(sim)["in_flight"] == 3, 15, "three calls in flight")
    spent, reserved = await day_figures(redis, budgets)
    assert spent == 0 and reserved > 0
    first.send(signal.SIGKILL)
    sim_admin(sim, "/_sim/config", {"latency_ms": 10})
    workers(s)

    async def finished():
        return all([await producer.redis.exists(f"llm-router:result:{i}") for i in ids])

    await wait_until_async(finished, 30, "the jobs to run again and finish")
    assert [(await producer.result(i)).status for i in ids] == ["succeeded"] * 3

    async def released():  # by the live worker's keeper, once the dead one's lease has run out
        records = [json.loads(v) for v in (await redis.hgetall(BUDGET_RESERVATIONS)).values()]
        return len(records) == 3 and all(r.get("x") == 1 for r in records)  # the killed calls': tombstones

    await wait_until_async(released, 10, "the killed calls' reservations to be released")
    charged = stats(sim)["charged_total"]  # the killed calls were not billed
    assert await day_figures(redis, budgets) == (pytest.approx(charged, abs=1e-9), 0.0)


@pytest.mark.parametrize(
    "value, named",
    [
        ('{"daily": 5}', 'BUDGETS: unknown key "daily": did you mean "daily_usd"?'),
        ('{"daily_usd": -1}', 'BUDGETS, in ["daily_usd"]: Input should be greater than or equal to 0'),
        ('{"sources": {"billing": "lots"}}', 'BUDGETS, in ["sources"]["billing"]'),
        ("daily_usd=5", "BUDGETS: not valid JSON"),
    ],
)
def test_bad_budgets_refuse_the_worker_at_start_up_naming_the_setting(settings, value, named):
    env = {**os.environ, **settings_env(settings), "BUDGETS": value}
    done = subprocess.run([llm_router(), "worker", "--burst"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr


def test_http_batches_take_a_budget_as_an_extra_body_field(redis_url):
    settings = Settings(redis_url=redis_url, ingress_tokens={"tok": "team"}, _env_file=None)
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
    }
    with TestClient(create_app(settings), headers={"Authorization": "Bearer tok"}) as client:
        uploaded = client.post(
            "/v1/files", files={"file": ("in.jsonl", json.dumps(line) + "\n")}, data={"purpose": "batch"}
        ).json()
        body = {"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        made = client.post("/v1/batches", json={**body, "budget_usd": 2.5})
        assert made.status_code == 200 and made.json()["budget_usd"] == 2.5
        assert client.get(f"/v1/batches/{made.json()['id']}").json()["budget_usd"] == 2.5
        refused = client.post("/v1/batches", json={**body, "budget_usd": "lots"})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "budget_usd" and refused.json()["error"]["code"] == "invalid_budget"


async def test_a_schedules_budget_is_read_checked_and_set_on_its_batches(settings, tmp_path, producer):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    entry = f'[[schedule]]\nname = "n"\ncron = "0 2 * * *"\nprompts = "{prompts}"\n'
    entry += 'template = "{text}"\nmodel = "gpt-4.1"\n'
    path = tmp_path / "s.toml"
    path.write_text(entry + "budget_usd = 1.5\n")
    [schedule] = schedules.load(settings.model_copy(update={"schedules_file": str(path)}))
    assert schedule.budget_usd == 1.5
    tick = schedule.latest_tick(time.time())
    batch, created = await schedules.submit(producer.batches, schedule, schedule.batch_id(tick), tick)
    assert created and batch.budget_usd == 1.5
    path.write_text(entry + "budget_usd = -1\n")
    with pytest.raises(ConfigError, match="budget_usd: must be a number of USD"):
        schedules.load(settings.model_copy(update={"schedules_file": str(path)}))


def test_the_cli_sets_a_batch_budget(settings, tmp_path):
    requests = tmp_path / "in.jsonl"
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    requests.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    env = {**os.environ, "REDIS_URL": settings.redis_url, "QUEUE_NAME": settings.queue_name}
    cli = [llm_router(), "batch", "submit", str(requests), "--json"]
    done = subprocess.run([*cli, "--budget", "0.25"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["budget_usd"] == 0.25
    for bad in ("-1", "nan", "inf"):
        refused = subprocess.run([*cli, "--budget", bad], env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "Invalid value for '--budget'" in refused.stderr, (bad, refused.stderr)


async def test_an_admission_sent_again_after_a_lost_answer_reserves_once(redis, settings):
    # The worker's Redis client retries a command whose answer a connection error cut (a restart,
    # a failover: worker.contract.connections); the admit script had run, so it runs twice with one
    # reservation id. The reservation must be made once, or `reserved` keeps the extra for the day.
    from redis.asyncio import Redis as AsyncRedis

    from worker.contract.connections import arq_settings
    from worker.process.scripts import preload

    cutter = ReplyCutter(settings.redis_url)
    url = await cutter.start()
    rs = arq_settings(url)
    client = AsyncRedis.from_url(url, retry=rs.retry, retry_on_error=rs.retry_on_error)
    try:
        limiter = Limiter(client, budgeted(settings, daily_usd=1.0))
        await preload(client, [limiter._admit])
        cutter.marker = limiter._admit.sha.encode()
        admission = await limiter.admit("m", 0, 5, plan(limiter))
        assert cutter.cuts == 1 and admission.status == "ok"
        assert await day_figures(redis, limiter.budgets) == (0.0, pytest.approx(WORST))
        await limiter.budgets.settle(admission.reservation, "m", succeeded(0.1))
        assert await day_figures(redis, limiter.budgets) == (0.1, 0.0)
    finally:
        await client.aclose()
        cutter.server.close()


async def test_a_call_cancelled_after_its_answer_still_settles_its_reservation(settings, sim, monkeypatch):
    # JOB_TIMEOUT_S (or SIGTERM past the grace) can cancel a job at any await: after a failed
    # streamed attempt the worker publishes a reset (worker.outputs.events) before it records the call;
    # cancelled there, the call must still be recorded and its reservation settled, not held
    # (renewed by the keeper) until it is too old.
    from arq import create_pool

    from tests.helpers import sim_admin
    from worker.calls.call import Call
    from worker.calls.routing import call_once
    from worker.contract import connections
    from worker.contract.keys import BUDGET_RESERVATIONS, calls_key
    from worker.outputs.events import JobEvents
    from worker.process import service

    s = budgeted(settings, daily_usd=5.0).model_copy(update={"metrics_port": 0})
    pool = await create_pool(connections.arq_settings(s.redis_url))
    ctx = {"settings": s, "redis": pool}
    await service.startup(ctx)
    resources = ctx["resources"]
    publishing = asyncio.Event()

    async def slow_reset(self, model, error):
        publishing.set()
        await asyncio.Event().wait()  # the reset's write never answers: cancelled here

    monkeypatch.setattr(JobEvents, "attempt_ended", slow_reset)
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": True})
    try:
        events = JobEvents(pool, "jc", s)
        payload = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 10}
        call = Call(resources, "jc", payload, max_wait_s=5, events=events)
        admission = await resources.limiter.admit("gpt-4.1", 100, 5, call.budget_plan("gpt-4.1"))
        assert admission.reservation is not None
        task = asyncio.create_task(
            call_once(call, "gpt-4.1", {**payload, "model": "gpt-4.1"}, 100, 0.0, admission.reservation)
        )
        await asyncio.wait_for(publishing.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until_async(lambda: pool.hlen(calls_key("jc")), 5, "the call recorded")
        assert not await pool.hexists(BUDGET_RESERVATIONS, admission.reservation.id)
        assert admission.reservation.id not in resources.limiter.budgets.live
    finally:
        sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": False})
        await service.shutdown(ctx)
        await pool.aclose()


async def test_a_call_cancelled_in_flight_keeps_its_reservation_spent(settings, sim):
    # JOB_TIMEOUT_S (or SIGTERM past the grace) cancels a job whose call the gateway has: it may
    # bill it, so its worst case stays spent; cancelled before it was sent, it gives all back.
    from arq import create_pool

    from worker.calls.call import Call
    from worker.calls.routing import call_once
    from worker.contract import connections
    from worker.process import service

    s = budgeted(settings, daily_usd=5.0).model_copy(update={"metrics_port": 0, "prices": {"gpt-4.1": SIM_GPT41}})
    pool = await create_pool(connections.arq_settings(s.redis_url))
    ctx = {"settings": s, "redis": pool}
    await service.startup(ctx)
    resources = ctx["resources"]
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "hang_s": 30})
    try:
        payload = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
        call = Call(resources, "jc", payload, max_wait_s=5)
        admission = await resources.limiter.admit("gpt-4.1", 100, 5, call.budget_plan("gpt-4.1"))
        worst = admission.reservation.worst_usd
        task = asyncio.create_task(
            call_once(call, "gpt-4.1", {**payload, "model": "gpt-4.1"}, 100, 0.0, admission.reservation)
        )
        await wait_until_async(lambda: stats(sim)["in_flight"] == 1, 10, "the call at the gateway")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        budgets = resources.limiter.budgets
        assert await day_figures(pool, budgets) == (pytest.approx(worst), 0.0)
        assert not await pool.hexists(BUDGET_RESERVATIONS, admission.reservation.id)
    finally:
        await service.shutdown(ctx)
        await pool.aclose()
