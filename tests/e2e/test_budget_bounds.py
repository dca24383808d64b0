"""Budgets against the strictest gateway: a call's worst case must be an upper bound of what any
gateway can bill it, whatever the job carries. The simulator bills every byte of the request
body and each choice's whole cap (`bill_at_bound`; with no cap, the model's context window), so
a worst case short of that shows as money spent past the budget. The jobs are adversarial:
100 KB tools and schemas, Chinese prompts, images, no max_tokens with n=4, Gemini's native
body; in-process, then racing across four `llm-router worker` processes."""

from __future__ import annotations

import pytest

from harness.wait import wait_until_async
from producers import Producer
from sim.catalog import IMAGE_TOKENS_MAX, MODELS
from tests.helpers import run_worker, sim_admin
from worker.contract.settings import BudgetConfig, Price
from worker.limits import tokens

PNG = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
# PRICES at the simulator's own prices: the worst cases are exact, only the token bounds are tested
PRICES = {
    name: Price(input=MODELS[name].input_per_1k, output=MODELS[name].output_per_1k)
    for name in ("gpt-4.1", "deepseek-chat", "gemini-2.0-flash", "o3-mini", "free-model")
}


def tools_job(i: int, size: int = 100_000) -> dict:
    """The issue's case: a function description of `size` bytes and max_tokens 16."""
    fn = {"name": "lookup", "description": "d" * size, "parameters": {"type": "object", "properties": {}}}
    return {"model": "gpt-4.1", "message": f"look {i} up", "tools": [{"type": "function", "function": fn}]}


def schema_job(i: int, size: int = 100_000) -> dict:
    schema = {"type": "object", "description": "s" * size, "properties": {"answer": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    return {"model": "gpt-4.1", "message": f"question {i}", "response_format": fmt}


def chinese_job(i: int, chars: int = 30_000) -> dict:
    """About a token a character on a real gateway: three UTF-8 bytes each, one JSON character."""
    return {"model": "gpt-4.1", "message": f"{i}" + "机器学习" * (chars // 4)}


def images_job(i: int) -> dict:
    image = {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}}
    return {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": [{"type": "text", "text": f"{i}"}, image, image]}],
    }


def uncapped_job(i: int) -> dict:
    """No max_tokens, four choices: a gateway bills whatever the model writes."""
    return {"model": "deepseek-chat", "message": f"{i} " + "word " * 2000, "n": 4, "max_tokens": None}


def native_job(i: int) -> dict:
    """Gemini's own body (contents, inline_data, generationConfig), no max_tokens."""
    image = {"type": "image_url", "image_url": {"url": PNG}}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "description": "x" * 2000}}}
    return {
        "model": "gemini-2.0-flash",
        "messages": [{"role": "user", "content": [{"type": "text", "text": f"what is {i}"}, image]}],
        "gemini_native": True,
        "response_format": fmt,
        "max_tokens": None,
    }


KINDS = {
    # kind: (job, the budget: room for four or five of its worst cases)
    "tools": (tools_job, 0.9),
    "schema": (schema_job, 0.9),
    "chinese": (chinese_job, 0.8),
    "images": (images_job, 0.9),
    "uncapped_n4": (uncapped_job, 0.1),
    "gemini_native": (native_job, 0.03),
}


async def enqueue(producer: Producer, job: dict) -> str:
    job = {"max_tokens": 16, "fallbacks": [], **job}
    if job["max_tokens"] is None:
        del job["max_tokens"]
    return await producer.chat(**job)


def stats(sim) -> dict:
    return sim_admin(sim, "/_sim/stats")


@pytest.fixture
async def producer(make_producer, settings):
    return await make_producer(settings, source="billing")


@pytest.fixture
def strict(sim):
    """The simulator billing each call the most a budget's worst case allows."""
    sim_admin(sim, "/_sim/config", {"bill_at_bound": True})
    sim_admin(sim, "/_sim/credits", {"credits": 10_000})  # a budget, not the credits, must stop the spend
    return sim


@pytest.mark.parametrize("kind", list(KINDS))
async def test_adversarial_jobs_never_spend_past_a_source_budget(kind, producer, settings, strict):
    make, budget = KINDS[kind]
    s = settings.model_copy(
        update={"budgets": BudgetConfig(sources={"billing": budget}), "prices": PRICES, "worker_concurrency": 10}
    )
    ids = [await enqueue(producer, make(i)) for i in range(10)]
    await run_worker(s)
    results = [await producer.result(i) for i in ids]
    refused = [r for r in results if r.status == "failed"]
    assert {r.error.type for r in refused} == {"budget"} and refused, [r.error for r in refused]
    w = max(r.error.budget.needed_usd for r in refused)
    charged = stats(strict)["charged_total"]
    print(f"{kind}: budget {budget} w={w:.6f} charged={charged:.6f} ran={len(results) - len(refused)}/10")
    assert 0 < charged <= budget + w
    ran = len(results) - len(refused)
    assert ran == sum(stats(strict)["calls"].values())
    # each call billed its worst case, to within the digits of the job's number: the bound is the bill
    assert charged == pytest.approx(ran * w, rel=1e-3)


async def test_a_budget_sends_the_cap_it_reserved_for_in_the_field_each_model_takes(producer, settings, sim):
    s = settings.model_copy(
        update={"budgets": BudgetConfig(daily_usd=10), "prices": PRICES, "budget_default_max_tokens": 6}
    )
    long = "word " * 40
    ids = [
        await producer.chat("gpt-4.1", long, n=2, temperature=0, fallbacks=[]),
        await producer.chat("o3-mini", long, fallbacks=[]),  # refuses max_tokens
        await producer.chat("gemini-2.0-flash", long, gemini_native=True, fallbacks=[]),
        await producer.chat("deepseek-chat", long, max_tokens=8, fallbacks=[]),  # its own cap stands
    ]
    await run_worker(s)
    chat, reasoning, native, own = [await producer.result(i) for i in ids]
    sent = {r["body"].get("model") or r["path"]: r["body"] for r in sim_admin(sim, "/_sim/requests")["requests"]}
    assert sent["gpt-4.1"]["max_tokens"] == 6 and "max_completion_tokens" not in sent["gpt-4.1"]
    assert sent["o3-mini"]["max_completion_tokens"] == 6 and "max_tokens" not in sent["o3-mini"]
    [native_body] = [b for path, b in sent.items() if "generateContent" in path]
    assert native_body["generationConfig"]["maxOutputTokens"] == 6
    assert sent["deepseek-chat"]["max_tokens"] == 8
    # the answers say they were cut there
    assert chat.status == reasoning.status == native.status == own.status == "succeeded"
    assert chat.finish_reason == "length" and [c.finish_reason for c in chat.choices] == ["length"] * 2
    assert chat.usage.completion_tokens == 12
    assert reasoning.finish_reason == native.finish_reason == own.finish_reason == "length"
    # a cut answer is not what the request gets without a budget: not cached
    again = await producer.chat("gpt-4.1", long, n=2, temperature=0, fallbacks=[])
    await run_worker(s.model_copy(update={"budgets": BudgetConfig()}))
    again = await producer.result(again)
    assert not again.cached and again.finish_reason == "stop"
    [unbudgeted] = [r["body"] for r in sim_admin(sim, "/_sim/requests")["requests"][-1:]]
    assert "max_tokens" not in unbudgeted  # no budget applies: no cap added


# ---------------------------------------------------------------- worker processes


async def test_the_adversarial_race_four_processes_within_the_budget_and_no_cache_across_sources(
    producer, settings, strict, workers
):
    """Every kind of adversarial job at once, from 4 `llm-router worker` processes of 50: the
    simulator, billing every call the most it can, charges at most the budget plus one worst
    case; identical cacheable jobs of two sources are answered by one call each, never one for both."""
    budget = 2.0
    s = settings.model_copy(
        update={
            "budgets": BudgetConfig(daily_usd=budget),
            "prices": PRICES,
            "worker_concurrency": 50,
            "lease_s": 2.0,
            "poll_delay_s": 0.02,
            "max_wait_s": 5,
            "metrics_port": 0,
        }
    )
    sim_admin(strict, "/_sim/config", {"latency_ms": 30})
    makers = [lambda i: tools_job(i, 50_000), lambda i: schema_job(i, 50_000), chinese_job, images_job, uncapped_job]
    ids = [await enqueue(producer, makers[i % len(makers)](i)) for i in range(100)]
    cached: dict[str, list[str]] = {}
    for source in ("alpha", "beta"):
        async with Producer(settings.redis_url, queue_name=settings.queue_name, source=source) as p:
            ask = {"model": "free-model", "message": "the same question", "temperature": 0, "max_tokens": 20}
            cached[source] = [await enqueue(p, ask) for _ in range(10)]
    for _ in range(4):
        workers(s)

    async def finished():
        every = ids + cached["alpha"] + cached["beta"]
        return all([await producer.redis.exists(f"llm-router:result:{i}") for i in every])

    await wait_until_async(finished, 180, "every job's result")
    rs = [await producer.result(i) for i in ids]
    refused = [r for r in rs if r.status == "failed"]
    assert {r.error.type for r in refused} == {"budget"} and refused
    w = max(r.error.budget.needed_usd for r in refused)
    charged = stats(strict)["charged_total"]
    print(f"adversarial race: B={budget} w={w:.6f} charged={charged:.6f} refused={len(refused)}/{len(rs)}")
    assert charged <= budget + w
    # the cache: one call per source, each source's other jobs answered from its own
    for source, job_ids in cached.items():
        answers = [await producer.result(i) for i in job_ids]
        assert all(a.status == "succeeded" for a in answers), source
        assert sum(not a.cached for a in answers) == 1, source
    assert stats(strict)["calls"]["free-model"] == 2


# ---------------------------------------------------------------- models whose price is not configured


async def test_a_model_not_in_prices_is_reserved_at_the_ceiling_until_a_bill_teaches_its_price(
    producer, settings, strict
):
    """claude-3-sonnet is in no PRICES: its family's published price ($0.01/1K) is below what the
    simulator bills ($0.015/1K output), so ten calls reserved at the family's price all fit a
    $0.10 budget and were billed $0.15. Until a bill teaches its price, such a model is reserved
    at max(BUDGET_UNKNOWN_PRICE, its family's price)."""
    budget, max_tokens = 0.1, 1000
    s = settings.model_copy(
        update={"budgets": BudgetConfig(sources={"billing": budget}), "prices": {}, "worker_concurrency": 10}
    )
    sim_admin(strict, "/_sim/config", {"latency_ms": 100})  # ten calls in flight at once
    job = {"model": "claude-3-sonnet", "max_tokens": max_tokens}
    ids = [await enqueue(producer, {**job, "message": f"q{i}"}) for i in range(10)]
    await run_worker(s)
    results = [await producer.result(i) for i in ids]
    assert {r.status for r in results} <= {"succeeded", "failed"}
    assert {r.error.type for r in results if r.error} <= {"budget"}
    # billed at the bound, each call's bill is its true worst case (the calls differ by a digit)
    bills = [r.cost for r in results if r.status == "succeeded"]
    worst = max(bills)
    charged = stats(strict)["charged_total"]
    print(f"unpriced model: budget {budget} w={worst:.6f} charged={charged:.6f} ran={len(bills)}/10")
    assert 0 < charged <= budget + worst


# ---------------------------------------------------------------- the cap and the context window


async def test_the_cap_a_budget_sends_fits_the_context_window_or_the_job_is_refused_unsent(producer, settings, sim):
    """tiny-context has a window of 64 tokens. With a budget, a job without max_tokens was sent
    BUDGET_DEFAULT_MAX_TOKENS (4,096), which the gateway refuses: now the cap is what the window
    leaves after the prompt's estimate, and a prompt that leaves nothing is refused unsent."""
    s = settings.model_copy(
        update={
            "budgets": BudgetConfig(daily_usd=10),
            "prices": {"tiny-context": Price(input=0.0001, output=0.0001)},
            "model_context": {**settings.model_context, "tiny-context": 64},
        }
    )
    fits = await enqueue(producer, {"model": "tiny-context", "message": "word " * 20, "max_tokens": None})
    full = await enqueue(producer, {"model": "tiny-context", "message": "word " * 80, "max_tokens": None})
    await run_worker(s)
    ok, refused = await producer.result(fits), await producer.result(full)
    assert ok.status == "succeeded", ok.error
    [sent] = [r["body"] for r in sim_admin(sim, "/_sim/requests")["requests"]]
    assert 0 < sent["max_tokens"] < 64
    assert refused.status == "failed" and refused.error.type == "context_length"
    assert "context window of 64 tokens" in refused.error.message and refused.attempts == []
    assert stats(sim)["calls"] == {"tiny-context": 1} and stats(sim)["statuses"] == {"200": 1}


async def test_a_prompt_that_fills_the_window_is_sent_as_asked_when_no_budget_applies(producer, settings, sim):
    # no cap is added without a budget, so there is nothing to refuse: a batch without a budget's
    # line goes as the job asked (the gateway answers what it does); a batch with one is refused unsent
    s = settings.model_copy(
        update={
            "budgets": BudgetConfig(sources={"someone-else": 1}),
            "model_context": {**settings.model_context, "tiny-context": 64},
        }
    )
    body = {"model": "tiny-context", "messages": [{"role": "user", "content": "word " * 80}]}
    line = {"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions", "body": body}
    free = await producer.batches.submit([line])
    held = await producer.batches.submit([line], budget_usd=1)
    await run_worker(s)
    for batch, says in ((free, "maximum context length is 64"), (held, "context window of 64 tokens")):
        [result] = [e async for e in producer.batches.results(batch.id)]
        assert result["error"]["code"] == "context_length" and says in result["error"]["message"], result
    assert len(sim_admin(sim, "/_sim/requests")["requests"]) == 1 and stats(sim)["statuses"] == {"400": 1}


# ---------------------------------------------------------------- failures the gateway billed


@pytest.mark.parametrize("how", ["drop", "hang"])
async def test_calls_billed_then_dropped_or_hung_never_spend_past_the_budget(how, producer, settings, strict):
    """The simulator bills each call (at the bound) and then drops the connection or never
    answers (`bill_then`): a read timeout, a dropped connection, a cut stream may all have been
    billed, so they keep their reservation spent. Settled at $0, ten jobs retried three times
    each spent far past the budget."""
    budget = 0.003
    s = settings.model_copy(
        update={
            "budgets": BudgetConfig(sources={"billing": budget}),
            "prices": PRICES,
            "worker_concurrency": 10,
            "request_timeout_s": 0.5,
            "attempts_per_model": 3,
        }
    )
    sim_admin(strict, "/_sim/config", {"bill_then": how})
    jobs = [{"model": "gpt-4.1", "message": f"question {i}", **({"stream": True} if i % 2 else {})} for i in range(10)]
    ids = [await enqueue(producer, job) for job in jobs]
    await run_worker(s)
    results = [await producer.result(i) for i in ids]
    # one call's worst case: the most any body received bills at the bound (16 tokens a choice)
    price = PRICES["gpt-4.1"]
    bodies = [r["body"] for r in sim_admin(strict, "/_sim/requests")["requests"]]
    w = max(tokens.input_bound(b, IMAGE_TOKENS_MAX) * price.input + 16 * price.output for b in bodies) / 1000
    charged = stats(strict)["charged_total"]
    print(f"bill_then={how}: budget {budget} w={w:.6f} charged={charged:.6f} calls={stats(strict)['calls']}")
    assert 0 < charged <= budget + w
    assert all(r.status == "failed" for r in results)
    expected = {"connection", "malformed"} if how == "drop" else {"timeout"}
    assert {r.error.type for r in results} <= expected | {"budget"}
    assert any(r.error.type == "budget" for r in results), "the billed failures' spend stops the calls"


async def test_billed_failures_race_across_four_processes_within_the_budget(producer, settings, strict, workers):
    """Four `llm-router worker` processes of 20: every call is billed at the bound, then its
    connection dropped (gpt-4.1, plain and streamed) or held past the request timeout
    (deepseek-chat): the simulator's charge stays within the budget plus one worst case."""
    budget = 0.01
    s = settings.model_copy(
        update={
            "budgets": BudgetConfig(sources={"billing": budget}),
            "prices": PRICES,
            "worker_concurrency": 20,
            "request_timeout_s": 0.5,
            "lease_s": 2.0,
            "poll_delay_s": 0.02,
            "max_wait_s": 5,
            "metrics_port": 0,
        }
    )
    sim_admin(strict, "/_sim/config", {"bill_then": "drop", "latency_ms": 30})
    sim_admin(strict, "/_sim/config", {"model": "deepseek-chat", "bill_then": "hang"})
    models = ["gpt-4.1", "gpt-4.1", "deepseek-chat"]
    jobs = [
        {"model": models[i % 3], "message": f"question {i:03d}", **({"stream": True} if i % 4 == 1 else {})}
        for i in range(60)
    ]
    ids = [await enqueue(producer, job) for job in jobs]
    for _ in range(4):
        workers(s)

    async def finished():
        return all([await producer.redis.exists(f"llm-router:result:{i}") for i in ids])

    await wait_until_async(finished, 180, "every job's result")
    results = [await producer.result(i) for i in ids]
    # one call's worst case: the most a body of these jobs bills at the bound (16 tokens a choice);
    # the bodies of a kind differ by nothing but their digits
    bodies = [r["body"] for r in sim_admin(strict, "/_sim/requests")["requests"]]
    assert {b["model"] for b in bodies} == {"gpt-4.1", "deepseek-chat"} and any(b.get("stream") for b in bodies)
    w = max(
        (tokens.input_bound(b, IMAGE_TOKENS_MAX) * PRICES[b["model"]].input + 16 * PRICES[b["model"]].output) / 1000
        for b in bodies
    )
    charged = stats(strict)["charged_total"]
    print(f"billed failures race: B={budget} w={w:.6f} charged={charged:.6f} calls={stats(strict)['calls']}")
    assert 0 < charged <= budget + w
    assert all(r.status == "failed" for r in results)
    assert any(r.error.type == "budget" for r in results)
