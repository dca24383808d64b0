"""The shared limiter's Lua on the real redis-server: GCRA slots, pauses, token settling,
the circuit breaker and the queue gate."""

import itertools

import pytest
from redis.asyncio import Redis

from harness.wait import wait_until_async
from worker.contract.keys import GLOBAL_LIMIT, model_key
from worker.contract.settings import RateLimit, Settings
from worker.limits.gate import Gate
from worker.limits.limiter import Limiter


def make(redis, **kw):
    base = dict(rate_limit_headroom=0, circuit_failures=2, circuit_window_s=10, circuit_open_s=0.3, _env_file=None)
    return Limiter(redis, Settings(**{**base, **kw}))


async def half_open_probing(redis):
    """A limiter whose model "m" failed once, opened its circuit, and is now half-open with this
    caller's probe in flight."""
    limiter = make(redis, circuit_failures=1)
    await settle(limiter, "m", outcome="fail")

    async def probing() -> bool:  # 'circuit' until CIRCUIT_OPEN_S has passed, then this caller probes
        return (await limiter.admit("m", 0, 5)).status == "probe"

    await wait_until_async(probing, 5, "the circuit to go half-open", interval=0.02)
    return limiter


async def settle(limiter, model, **kw):
    kw = {"booked_tokens": 0, "used_tokens": None, "outcome": "neutral", "pause_s": 0, **kw}
    return await limiter.settle(model, **kw)


async def slot(redis: Redis, key: str = model_key("m"), field: str = "r") -> float:
    """The limiter's own record of its last booking: when the next request (`r`) or the next
    token (`t`) may start, in ms on Redis's clock. Tests assert these, not how long the calls
    took on this machine (a wait is the slot minus the time of the call); their intervals are
    seconds long, so that every call comes before the slot it is given, however slow the machine
    (no test sleeps: a booking is only a record)."""
    return float(await redis.hget(key, field))


async def test_requests_get_evenly_spaced_slots(redis: Redis):
    limiter = make(redis, rate_limits={"m": RateLimit(rpm=6)})  # one every 10 s
    waits, slots = [], []
    for _ in range(5):
        waits.append((await limiter.admit("m", 0, max_wait_s=60)).wait_s)
        slots.append(await slot(redis))
    assert waits[0] == 0  # the first is free
    assert [b - a for a, b in itertools.pairwise(slots)] == [10_000] * 4, slots  # each 10 s after the last
    assert all(10 * (i - 1) < w <= 10 * i for i, w in enumerate(waits) if i), waits  # each waits for its slot
    assert (await limiter.admit("other", 0, 5)).wait_s == 0  # limits are per model


async def test_headroom_runs_under_the_limit(redis: Redis):
    limiter = make(redis, rate_limits={"m": RateLimit(rpm=6)}, rate_limit_headroom=0.1)
    await limiter.admit("m", 0, 60)
    first = await slot(redis)
    second = await limiter.admit("m", 0, 60)
    # booked 10 s / (1 - 0.1) after the first, not 10 s
    assert await slot(redis) - first == pytest.approx(10_000 / 0.9)
    assert second.booked and 10 < second.wait_s <= 11.12


async def test_a_known_window_spreads_one_windows_requests_over_the_window_plus_the_jitter(redis: Redis):
    # RATE_LIMIT_WINDOW_S: 6 a minute in a 10 s window is 1 per window; its requests are booked
    # 10 s + 250 ms apart (the jitter a late request may have), not 10 s / (1 - headroom)
    limiter = make(
        redis,
        rate_limits={"m": RateLimit(rpm=6)},
        rate_limit_headroom=0.5,
        rate_limit_window_s=10,
        rate_limit_jitter_ms=250,
    )
    await limiter.admit("m", 0, 60)
    first = await slot(redis)
    await limiter.admit("m", 0, 60)
    assert await slot(redis) - first == pytest.approx(10_250)


async def test_a_slot_further_than_the_limit_is_not_booked(redis: Redis):
    limiter = make(redis, rate_limits={"m": RateLimit(rpm=6)})  # one every 10 s
    assert (await limiter.admit("m", 0, 5)).booked
    far = await limiter.admit("m", 0, 5)
    assert far.status == "wait" and 5 < far.wait_s <= 10  # over the caller's 5 s, at most the interval
    again = await limiter.admit("m", 0, 5)
    assert again.status == "wait" and again.wait_s <= far.wait_s  # nothing was booked by the refusal


async def test_tokens_are_booked_then_settled(redis: Redis):
    limiter = make(redis, rate_limits={"m": RateLimit(tpm=600)})  # 100 ms per token
    assert (await limiter.admit("m", 500, 60)).wait_s == 0
    booked = await slot(redis, field="t")
    second = await limiter.admit("m", 500, 60)
    assert second.status == "retry" and 45 < second.wait_s <= 50  # not booked ahead: ask when they are paid
    assert await slot(redis, field="t") == booked
    assert (await limiter.admit("m", 500, 10)).status == "wait"  # longer than this caller waits
    await settle(limiter, "m", booked_tokens=500, used_tokens=50, outcome="ok")  # 450 back
    assert await slot(redis, field="t") == booked - 45_000
    assert (await limiter.admit("m", 500, 60)).wait_s <= 5  # so the next starts sooner


async def test_a_429_pause_holds_the_model_for_everyone(redis: Redis):
    a, b = make(redis), make(redis)  # two workers, no configured limit at all
    await settle(a, "m", pause_s=60)
    assert 50 < (await b.admit("m", 0, 90)).wait_s <= 60  # b's call waits for a's pause
    assert (await b.admit("m", 0, 30)).status == "wait"


async def test_circuit_opens_after_k_failures_then_one_probe_closes_it(redis: Redis):
    limiter = make(redis)
    await settle(limiter, "m", outcome="fail")
    assert (await limiter.admit("m", 0, 5)).booked
    assert await settle(limiter, "m", outcome="fail") == 1  # opened
    skipped = await limiter.admit("m", 0, 5)
    assert skipped.status == "circuit" and 0 < skipped.wait_s <= 0.3
    assert await redis.pttl(model_key("m")) > 0  # state in Redis expires
    import asyncio

    await asyncio.sleep(0.35)
    probe = await limiter.admit("m", 0, 5)
    assert probe.status == "probe"
    assert (await limiter.admit("m", 0, 5)).status == "probing"  # one probe at a time
    await settle(limiter, "m", outcome="ok")
    assert (await limiter.admit("m", 0, 5)).status == "ok"


async def test_a_failed_probe_reopens_at_once(redis: Redis):

    limiter = await half_open_probing(redis)
    await settle(limiter, "m", outcome="fail")
    assert (await limiter.admit("m", 0, 5)).status == "circuit"


async def test_the_gate_pauses_every_model(redis: Redis):
    limiter, gate = make(redis), Gate(redis, probe_interval_s=1)
    assert await gate.close("credits", "Insufficient credits", "gpt-4.1")
    assert not await gate.close("auth", "again", "gpt-4.1")  # the first reason stays
    admission = await limiter.admit("anything", 0, 5)
    assert admission.status == "gate" and admission.gate["reason"] == "credits"
    assert await gate.open()
    assert (await limiter.admit("anything", 0, 5)).booked


async def test_a_global_limit_spaces_calls_across_models(redis: Redis):
    limiter = make(redis, global_rate_limit=RateLimit(rpm=6))
    waits, slots = [], []
    for model in ("a", "b", "c"):
        waits.append((await limiter.admit(model, 0, 60)).wait_s)
        slots.append(await slot(redis, GLOBAL_LIMIT))
    assert waits[0] == 0 and 0 < waits[1] <= 10 and 10 < waits[2] <= 20
    assert [b - a for a, b in itertools.pairwise(slots)] == [10_000, 10_000]  # one booking every 10 s


async def test_a_failed_call_gives_back_every_token_it_booked(redis: Redis):
    limiter = make(redis, rate_limits={"m": RateLimit(tpm=60_000)})  # 1 ms per token
    assert (await limiter.admit("m", 50_000, 5)).status == "ok"  # 50 s of the model's tokens
    assert (await limiter.admit("m", 10, 0.1)).status == "wait"
    await settle(limiter, "m", booked_tokens=50_000, outcome="fail")  # failed, no usage: all back
    after = await limiter.admit("m", 10, 0.1)
    assert after.status == "ok" and after.wait_s == 0


async def limiter_state(redis: Redis) -> list[dict]:
    """Model m's and the global limit's hashes, as they are in Redis."""
    return [await redis.hgetall(key) for key in (model_key("m"), GLOBAL_LIMIT)]


async def test_a_booking_over_a_whole_window_is_refused_and_books_nothing(redis: Redis):
    limiter = make(redis, rate_limits={"m": RateLimit(tpm=60_000)}, global_rate_limit=RateLimit(tpm=100_000))
    assert (await limiter.admit("n", 100_001, 5)).limit == "the global TPM limit (GLOBAL_RATE_LIMIT) of 100000"
    assert (await limiter.admit("m", 1_000, 5)).status == "ok"
    before = await limiter_state(redis)
    refused = await limiter.admit("m", 10**12, 5)
    assert refused.status == "too_large" and not refused.booked and refused.wait_s == 0
    assert refused.limit == "m's TPM limit of 60000"
    assert await limiter_state(redis) == before  # untouched
    await settle(limiter, "m", booked_tokens=1_000)
    assert (await limiter.admit("m", 60_000, 5)).status == "ok"  # a whole window is allowed


async def test_callers_waiting_on_a_probe_are_told_to_ask_again_not_to_wait_its_lease(redis: Redis):
    import asyncio

    limiter = make(redis, circuit_failures=1, request_timeout_s=120)
    await settle(limiter, "m", outcome="fail")
    assert (await limiter.admit("m", 0, 5)).status == "circuit"  # open: skipped, as before
    await asyncio.sleep(0.35)
    assert (await limiter.admit("m", 0, 5)).status == "probe"
    waiting = await limiter.admit("m", 0, 5)
    assert waiting.status == "probing" and not waiting.booked
    await settle(limiter, "m", outcome="ok")  # the probe succeeded: the next ask is admitted
    assert (await limiter.admit("m", 0, 5)).status == "ok"


async def test_a_probe_that_says_nothing_about_health_frees_the_probe_slot(redis: Redis):

    limiter = await half_open_probing(redis)
    await settle(limiter, "m", outcome="neutral")  # e.g. the probe met a 429
    assert (await limiter.admit("m", 0, 5)).status == "probe"  # the next caller probes


async def test_a_settlement_sent_again_after_a_lost_answer_applies_once(redis: Redis, redis_url: str):
    # The worker's Redis client sends a command again when a connection error cut its answer
    # (worker.contract.connections); the settle had run. Run twice, it gave the unused tokens back twice
    # (the next calls start early: over the TPM limit) and counted one failure as two.
    from harness.reply_cutter import ReplyCutter
    from worker.contract.connections import arq_settings
    from worker.process.scripts import preload

    cutter = ReplyCutter(redis_url)
    url = await cutter.start()
    rs = arq_settings(url)
    client = Redis.from_url(url, retry=rs.retry, retry_on_error=rs.retry_on_error)
    try:
        limiter = make(client, rate_limits={"m": RateLimit(tpm=60_000)})  # 1 ms a token; 2 failures open
        await preload(client, [limiter._settle])
        assert (await limiter.admit("m", 500, 5)).booked
        booked = float(await redis.hget(model_key("m"), "t"))
        cutter.marker = limiter._settle.sha.encode()
        opened = await settle(limiter, "m", booked_tokens=500, outcome="fail")  # failed: all 500 back
        assert cutter.cuts == 1 and opened == 0
        assert float(await redis.hget(model_key("m"), "t")) == pytest.approx(booked - 500)
        assert await redis.hget(model_key("m"), "fails") == b"1"
        assert (await limiter.admit("m", 0, 5)).status == "ok"  # one failure: the circuit is closed
        assert await settle(limiter, "m", outcome="fail") == 1  # the second opens it
    finally:
        await client.aclose()
        cutter.server.close()


def test_a_budget_plan_asks_the_bounds_only_when_a_budget_can_apply(redis: Redis):
    # The prompt's bound walks the body a call sends: a call no budget applies to (most) must
    # not pay for it, and one a budget applies to must carry it.
    from worker.contract.settings import BudgetConfig

    asked: list[str] = []

    def bounds(model: str):
        def given() -> tuple[int, int]:
            asked.append(model)
            return 123, 45

        return given

    unbudgeted = make(redis)
    assert unbudgeted.budgets.plan("m", None, "j1", bounds("m"), None) is None
    budgeted = make(redis, budgets=BudgetConfig(models={"b": 1.0}))
    assert budgeted.budgets.plan("m", None, "j1", bounds("m"), None) is None  # the budget is b's
    assert budgeted.budgets.plan("b", None, "j1", bounds("b"), None) is not None
    capped = unbudgeted.budgets.plan("m", None, "j1", bounds("c"), 0.5)  # a job's own budget cap
    assert asked == ["b", "c"]
    assert capped is not None and capped.args[2:4] == [123, 45]


async def test_a_budget_reservation_settled_twice_gives_its_tokens_back_once(redis: Redis):
    # The mark of a settlement is the reservation's own id: a call settled by two paths (the
    # cancel path and the record path, or a resent settle built anew) applies once, not twice.
    from worker.contract.settings import BudgetConfig, Price

    limiter = make(
        redis,
        rate_limits={"m": RateLimit(tpm=60_000)},  # 1 ms a token
        budgets=BudgetConfig(daily_usd=10),
        prices={"m": Price(input=1, output=1)},
    )
    plan = limiter.budgets.plan("m", None, "j1", lambda: (100, 100), None)
    admission = await limiter.admit("m", 500, 5, plan)
    assert admission.booked and admission.reservation is not None
    booked = float(await redis.hget(model_key("m"), "t"))
    for _ in range(2):
        settlement = limiter.budgets.settlement(admission.reservation, "m", None)
        await settle(limiter, "m", booked_tokens=500, outcome="fail", budget=settlement)
    assert float(await redis.hget(model_key("m"), "t")) == pytest.approx(booked - 500)
    assert await redis.hget(model_key("m"), "fails") == b"1"
