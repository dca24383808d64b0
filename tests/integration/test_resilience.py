"""The retry/fallback policy end to end, one error class at a time: producer -> real Redis ->
arq Worker (in-process, burst) -> simulator with faults switched on. After each, the spend in
Redis equals what the simulator charged, and every job is succeeded or dead-lettered."""

import asyncio
import itertools
import logging

import pytest

from harness.wait import wait_until_async
from tests.helpers import run_worker, sim_admin
from worker.contract.keys import GATE, model_key
from worker.contract.settings import RateLimit


async def results(producer, ids):
    return [await producer.result(i) for i in ids]


async def assert_books_balance(producer, sim):
    """What Redis says was spent is exactly what the gateway charged, model by model."""
    charged = sim_admin(sim, "/_sim/stats")["charged"]
    assert await producer.store.spend() == pytest.approx({m: c for m, c in charged.items() if c})


async def assert_settled(producer, ids):
    """Every job has a result; the failed ones, and only they, are dead-lettered."""
    rs = await results(producer, ids)
    assert all(r is not None for r in rs)
    failed = {r.job_id for r in rs if r.status == "failed"}
    assert set(await producer.dead_letters.ids()) == failed
    assert await producer.queued() == 0
    return rs


async def test_5xx_is_retried_on_the_same_model_with_backoff(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "fail_next": [500, 502]})
    job = await producer.chat("gpt-4.1", "hi", fallbacks=["claude-3-sonnet"])
    await run_worker(settings)
    [r] = await assert_settled(producer, [job])
    assert r.status == "succeeded" and r.model == "gpt-4.1"
    assert [(a.model, a.error.status if a.error else 200) for a in r.attempts] == [
        ("gpt-4.1", 500),
        ("gpt-4.1", 502),
        ("gpt-4.1", 200),
    ]
    assert all(a.waited_s > 0 for a in r.attempts[1:])  # backed off before each retry
    await assert_books_balance(producer, sim)


async def test_a_model_down_falls_back_along_the_configured_chain(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": True})
    s = settings.model_copy(update={"fallbacks": {"gpt-4.1": ["no-such-model", "claude-3-sonnet"]}})
    job = await producer.chat("gpt-4.1", "hi")
    await run_worker(s)
    [r] = await assert_settled(producer, [job])
    assert r.status == "succeeded" and r.model == "claude-3-sonnet"
    assert [(a.model, a.error.type if a.error else "ok") for a in r.attempts] == [("gpt-4.1", "server")] * 3 + [
        ("no-such-model", "not_found"),
        ("claude-3-sonnet", "ok"),
    ]
    assert r.cost == pytest.approx(sim_admin(sim, "/_sim/stats")["charged_total"])
    await assert_books_balance(producer, sim)


async def test_the_job_can_override_the_chain(producer, settings, sim):
    s = settings.model_copy(update={"default_fallbacks": ["claude-3-sonnet"]})
    own = await producer.chat("no-such-model", "hi", fallbacks=["gemini-2.0-flash"])
    none = await producer.chat("no-such-model", "hi", fallbacks=[])
    await run_worker(s)
    a, b = await assert_settled(producer, [own, none])
    assert a.model == "gemini-2.0-flash"
    assert b.status == "failed" and b.error.type == "not_found" and len(b.attempts) == 1


async def test_bad_request_fails_at_once_without_fallback(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "fail_next": [400]})
    job = await producer.chat("gpt-4.1", "hi", fallbacks=["claude-3-sonnet"])
    await run_worker(settings)
    [r] = await assert_settled(producer, [job])
    assert r.status == "failed" and r.error.type == "bad_request" and "Simulated upstream failure" in r.error.message
    assert sim_admin(sim, "/_sim/stats")["calls"] == {"gpt-4.1": 1}


async def test_context_length_goes_to_the_configured_larger_model(producer, settings, sim):
    long = "word " * 200  # over tiny-context's 64 tokens
    s = settings.model_copy(update={"context_fallbacks": {"tiny-context": "gpt-4.1"}})
    moved = await producer.chat("tiny-context", long, fallbacks=[])
    await run_worker(s)
    stuck = await producer.chat("tiny-context", long, fallbacks=[])
    await run_worker(settings)  # no larger model configured: the error is the result
    a, b = await assert_settled(producer, [moved, stuck])
    assert a.status == "succeeded" and a.model == "gpt-4.1"
    assert [x.error.type for x in a.attempts if x.error] == ["context_length"]
    assert b.status == "failed" and b.error.type == "context_length"


async def test_hang_past_the_timeout_then_fallback(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "hang_s": 5})
    s = settings.model_copy(update={"request_timeout_s": 0.3})
    job = await producer.chat("gpt-4.1", "hi", fallbacks=["claude-3-sonnet"])
    await run_worker(s)
    [r] = await assert_settled(producer, [job])
    assert r.model == "claude-3-sonnet"
    assert [a.error.type for a in r.attempts if a.error] == ["timeout"] * 3
    await assert_books_balance(producer, sim)  # the hung calls were never billed nor counted


@pytest.mark.parametrize("fault", [{"cut_stream_after": 2}, {"malformed": True}])
async def test_cut_streams_and_malformed_answers_back_off_then_fall_back(producer, settings, sim, fault):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", **fault})
    job = await producer.chat("gpt-4.1", "hi there", fallbacks=["claude-3-sonnet"], stream=True)
    await run_worker(settings)
    [r] = await assert_settled(producer, [job])
    assert r.model == "claude-3-sonnet" and r.content == "[claude-3-sonnet] You said: hi there"
    assert [a.error.type for a in r.attempts if a.error] == ["malformed"] * 3
    await assert_books_balance(producer, sim)


async def test_a_429_inside_a_stream_is_retried_then_falls_back(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "stream_rate_limit_after": 2})
    job = await producer.chat("gpt-4.1", "stream me", stream=True, fallbacks=["claude-3-sonnet"])
    await run_worker(settings)
    [r] = await assert_settled(producer, [job])
    assert r.model == "claude-3-sonnet" and r.content == "[claude-3-sonnet] You said: stream me"
    assert [(a.model, a.error.type if a.error else "ok") for a in r.attempts] == [
        ("gpt-4.1", "rate_limit")
    ] * settings.attempts_per_model + [("claude-3-sonnet", "ok")]
    await assert_books_balance(producer, sim)  # the cut-off streams were not billed


async def test_429_retry_after_is_honoured_on_every_retry_and_shared(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "fail_next": [429, 429, 429], "retry_after_s": 0.6})
    s = settings.model_copy(update={"worker_concurrency": 2})
    ids = [await producer.chat("gpt-4o-mini", f"q{i}", fallbacks=[]) for i in range(4)]
    await run_worker(s)
    rs = await assert_settled(producer, ids)
    assert all(r.status == "succeeded" for r in rs)
    assert sim_admin(sim, "/_sim/stats")["rate_limited"] == 3
    # Every retry after a 429 waited its Retry-After, not only the first one ...
    retried = 0
    for r in rs:
        for before, after in itertools.pairwise(r.attempts):
            assert before.error.type == "rate_limit"
            retried += 1
            assert after.at - (before.at + before.latency_s) >= 0.55, r.attempts
    assert retried == 3
    # ... and no one else called within that time either: the pause is shared.
    calls = sorted((a.at, a.latency_s, a.error) for r in rs for a in r.attempts)
    for at, latency, error in calls:
        if error:
            told = at + latency
            assert not [c for c in calls if told + 0.01 < c[0] < told + 0.55], "a call ignored the shared pause"
    await assert_books_balance(producer, sim)


async def test_remaining_zero_headers_hold_the_model_before_any_429(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "rpm": 2, "rate_window_s": 1})
    ids = [await producer.chat("gpt-4o-mini", f"q{i}", fallbacks=[]) for i in range(6)]
    await run_worker(settings.model_copy(update={"worker_concurrency": 1}))  # one call at a time
    rs = await assert_settled(producer, ids)
    assert all(r.status == "succeeded" for r in rs)
    stats = sim_admin(sim, "/_sim/stats")
    # every second call of a window answers "remaining-requests: 0": the model is held until the
    # reset, so the third never meets a 429 (without the headers it would, in every window)
    assert stats["calls"]["gpt-4o-mini"] == 6 and stats["rate_limited"] == 0
    await assert_books_balance(producer, sim)


async def test_a_long_rate_limit_wait_requeues_the_job_instead_of_holding_a_slot(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "fail_next": [429], "retry_after_s": 1})
    ids = [await producer.chat("gpt-4o-mini", f"q{i}", fallbacks=[], max_wait_s=0.1) for i in range(3)]
    worker = await run_worker(settings.model_copy(update={"worker_concurrency": 1}))
    rs = await assert_settled(producer, ids)
    assert all(r.status == "succeeded" for r in rs)
    # the 429 holds the model 1 s, over the jobs' 0.1 s: each goes back to the queue, none waits in a slot
    assert worker.jobs_retried >= 3 and all(r.runs >= 2 for r in rs)


async def test_max_wait_zero_means_never_wait_in_place(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "fail_next": [429], "retry_after_s": 0.5})
    job = await producer.chat("gpt-4o-mini", "now or later", fallbacks=[], max_wait_s=0)
    await run_worker(settings)  # MAX_WAIT_S is 2 here: a job that fell back to it would wait 0.5 s in its slot
    [r] = await assert_settled(producer, [job])
    assert r.status == "succeeded" and r.runs == 2  # it went back to the queue instead


async def test_circuit_opens_and_every_worker_skips_the_model(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": True})
    s = settings.model_copy(
        update={
            "circuit_failures": 2,
            "circuit_open_s": 30,
            "worker_concurrency": 1,
            "fallbacks": {"gpt-4.1": ["claude-3-sonnet"]},
        }
    )
    from prometheus_client import REGISTRY

    opened = REGISTRY.get_sample_value("llm_router_circuit_opened_total", {"model": "gpt-4.1"}) or 0
    ids = [await producer.chat("gpt-4.1", f"q{i}") for i in range(4)]
    await run_worker(s)
    rs = await assert_settled(producer, ids)
    assert all(r.model == "claude-3-sonnet" for r in rs)
    assert REGISTRY.get_sample_value("llm_router_circuit_opened_total", {"model": "gpt-4.1"}) == opened + 1
    assert sim_admin(sim, "/_sim/stats")["calls"]["gpt-4.1"] == 2  # then skipped while open


async def test_a_request_over_the_token_limit_fails_at_once_and_holds_no_one_up(producer, settings, sim):
    s = settings.model_copy(update={"rate_limits": {"gpt-4o-mini": RateLimit(tpm=60_000)}})
    # within the contract's bounds (10**12 is refused before it reaches a queue: tests/integration/test_trust.py),
    # over what the limiter allows the model in a whole window
    huge = await producer.chat("gpt-4o-mini", "hi", max_tokens=90_000, fallbacks=[])
    moved = await producer.chat("gpt-4o-mini", "hi", max_tokens=100_000, fallbacks=["gpt-4.1"])
    await asyncio.wait_for(run_worker(s), 5)
    a, b = await assert_settled(producer, [huge, moved])
    assert a.status == "failed" and a.error.type == "over_limit" and a.runs == 1 and not a.attempts
    assert a.error.message.startswith("request needs 900")  # 90,000 + the prompt's few
    assert a.error.message.endswith(
        "tokens (prompt + max_tokens), over gpt-4o-mini's TPM limit of 60000: lower max_tokens"
    )
    assert b.status == "succeeded" and b.model == "gpt-4.1"  # another model, without that limit, took it
    assert "gpt-4o-mini" not in sim_admin(sim, "/_sim/stats")["calls"]  # nothing was sent upstream
    # the refused booking left the model's schedule alone: later jobs run at once, in their first run
    ids = [await producer.chat("gpt-4o-mini", f"q{i}", max_tokens=50, fallbacks=[]) for i in range(5)]
    await asyncio.wait_for(run_worker(s), 30)
    rs = await results(producer, ids)
    # the limiter's own waits (not this machine's speed): the 250 tokens booked, no more
    assert all(r.status == "succeeded" and r.runs == 1 and r.attempts[0].waited_s < 1 for r in rs)
    assert await producer.dead_letters.ids() == [huge]


async def test_a_failed_call_gives_its_booked_tokens_back(producer, settings, sim):
    s = settings.model_copy(update={"rate_limits": {"gpt-4o-mini": RateLimit(tpm=60_000)}})
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "fail_next": [400]})
    failed = await producer.chat("gpt-4o-mini", "hi", max_tokens=50_000, fallbacks=[])  # ~50 s of the limit
    await asyncio.wait_for(run_worker(s), 5)
    after = await producer.chat("gpt-4o-mini", "next", max_tokens=50, fallbacks=[])
    await asyncio.wait_for(run_worker(s), 30)
    a, b = await assert_settled(producer, [failed, after])
    assert a.status == "failed" and a.error.type == "bad_request"
    assert b.status == "succeeded" and b.runs == 1 and b.attempts[0].waited_s < 0.5  # not held by a's booking


async def test_jobs_waiting_on_a_half_open_circuit_start_as_soon_as_the_probe_succeeds(producer, settings, sim):
    model = "gpt-4o-mini"
    sim_admin(sim, "/_sim/config", {"model": model, "down": True})
    s = settings.model_copy(
        update={
            "circuit_failures": 2,
            "circuit_open_s": 1,
            "request_timeout_s": 5,  # the probe's lease: 6 s, which the waiting jobs must not wait out
            "backoff_base_s": 0.2,  # no job retries 3 times before the circuit opens
            "backoff_cap_s": 0.2,
            "worker_concurrency": 40,
        }
    )
    ids = [await producer.chat(model, f"q{i}", fallbacks=[]) for i in range(30)]
    worker = asyncio.create_task(run_worker(s))

    async def circuit_opened():
        return await producer.redis.hexists(model_key(model), "open_until")

    await wait_until_async(circuit_opened, 5, f"{model}'s circuit to open")
    await asyncio.to_thread(sim_admin, sim, "/_sim/config", {"model": model, "down": False})
    await asyncio.wait_for(worker, 15)
    rs = await assert_settled(producer, ids)
    assert all(r.status == "succeeded" for r in rs)
    probe_at = min(a.at for r in rs for a in r.attempts if a.ok)  # the first call that passed after the outage
    late = sorted(r.finished_at.timestamp() - probe_at for r in rs)
    assert late[-1] < 1.5, late  # every job resumed at once, none waited out the probe's lease


async def test_401_fails_the_job_and_pauses_the_queue_until_a_probe_passes(producer, settings, sim, caplog):
    caplog.set_level(logging.WARNING, logger="llm_router")
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "fail_next": [401]})
    s = settings.model_copy(update={"worker_concurrency": 1})
    ids = [await producer.chat("gpt-4.1", f"q{i}", fallbacks=["claude-3-sonnet"]) for i in range(3)]
    await run_worker(s)
    first, *rest = await assert_settled(producer, ids)
    assert first.status == "failed" and first.error.type == "auth"
    assert [a.model for a in first.attempts] == ["gpt-4.1"]  # no fallback burnt through it
    assert all(r.status == "succeeded" for r in rest)
    # the queue paused, and no other job called the gateway until a probe had passed (whether the
    # next job was claimed before the gate closed, and so ran twice, is up to the machine's timing)
    said = [r for r in caplog.records if r.name.startswith("llm_router")]
    paused = next(i for i, r in enumerate(said) if r.getMessage().startswith("queue paused (auth)"))
    resumed = next(i for i, r in enumerate(said) if r.getMessage().startswith("queue resumed"))
    assert paused < resumed
    assert min(a.at for r in rest for a in r.attempts) >= said[resumed].created
    assert sim_admin(sim, "/_sim/stats")["statuses"].get("401") == 1
    assert not await producer.redis.exists(GATE)


async def test_402_pauses_consuming_keeps_jobs_and_resumes_when_credits_return(producer, settings, sim):
    sim_admin(sim, "/_sim/credits", {"credits": 0})
    ids = [await producer.chat("gpt-4.1", f"q{i}") for i in range(3)]

    async def top_up():
        await asyncio.sleep(1.0)
        await asyncio.to_thread(sim_admin, sim, "/_sim/credits", {"credits": 50})

    refill = asyncio.create_task(top_up())
    await run_worker(settings)
    await refill
    rs = await assert_settled(producer, ids)
    assert all(r.status == "succeeded" for r in rs)
    assert any(a.error and a.error.type == "credits" for r in rs for a in r.attempts)
    assert sim_admin(sim, "/_sim/stats")["statuses"].get("402", 0) >= 2  # the job's, then the probes'
    await assert_books_balance(producer, sim)  # the successful probe's cent included


async def test_dead_letters_can_be_shown_replayed_and_purged(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": True})
    job = await producer.chat("gpt-4.1", "again", fallbacks=[])
    await run_worker(settings)
    [letter] = await producer.dead_letters.list()
    assert letter.job_id == job and letter.kind == "chat" and letter.error.type == "server"
    assert len(letter.attempts) == settings.attempts_per_model and letter.job["messages"][0]["content"] == "again"
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": False})
    assert await producer.dead_letters.replay(job)
    assert await producer.result(job) is None and await producer.dead_letters.size() == 0
    await run_worker(settings)
    assert (await producer.result(job)).content == "[gpt-4.1] You said: again"
    assert not await producer.dead_letters.replay(job)  # not dead any more


async def test_connection_errors_back_off_then_dead_letter(producer, settings):
    from harness.redis_server import free_port

    s = settings.model_copy(update={"aisa_base_url": f"http://127.0.0.1:{free_port()}/v1"})
    job = await producer.chat("gpt-4.1", "anyone?", fallbacks=["claude-3-sonnet"])
    await run_worker(s)
    [r] = await assert_settled(producer, [job])
    assert r.status == "failed" and r.error.type == "connection" and "every model failed" in r.error.message
    assert [a.model for a in r.attempts] == ["gpt-4.1"] * 3 + ["claude-3-sonnet"] * 3
    assert all(a.cost is None for a in r.attempts)
