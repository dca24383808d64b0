"""Named routes: a job's model `route:<name>` against a real Redis and the simulator: cost
order, falling back past a model that is down, rules on the request, unknown routes and bad
ROUTES refused."""

from __future__ import annotations

import json
import subprocess

import pytest
from prometheus_client import REGISTRY

from harness.processes import llm_router, settings_env
from harness.wait import wait_until_async
from producers.api import JobRejected, Producer
from tests.helpers import run_worker, sim_admin
from worker.contract import routes
from worker.contract.keys import model_key
from worker.contract.settings import ConfigError, Price, load_settings

PNG_URL = "data:image/png;base64," + "iVBORw0KGgo" + "A" * 40 + "="

CHEAP = {"models": ["gpt-4.1", "gemini-2.0-flash", "deepseek-v3", "qwen-max"], "order": "cost"}
RULED = {
    "models": ["gpt-4.1"],
    "rules": [
        {"images": True, "models": ["gpt-4o"]},
        {"max_prompt_chars": 20, "models": ["gpt-3.5-turbo"]},
    ],
}


@pytest.fixture
def routed(settings):
    return settings.model_copy(update={"routes": load_settings(_env_file=None, routes={"c": CHEAP, "r": RULED}).routes})


@pytest.fixture
async def producer(make_producer, routed, monkeypatch):
    monkeypatch.setenv("ROUTES", json.dumps({"c": CHEAP, "r": RULED}))  # this producer knows the routes
    return await make_producer(routed)


def calls(sim) -> dict[str, int]:
    return sim_admin(sim, "/_sim/stats")["calls"]


async def circuit_open_over(redis) -> bool:
    open_until = int(await redis.hget(model_key("gemini-2.0-flash"), "open_until") or 0)
    seconds, micros = await redis.time()
    return open_until <= seconds * 1000 + micros // 1000


def choices(route: str, model: str) -> float:
    return REGISTRY.get_sample_value("llm_router_route_choices_total", {"route": route, "model": model}) or 0.0


async def test_a_cost_ordered_route_starts_with_the_cheapest_model(producer, routed, sim):
    before = choices("c", "gemini-2.0-flash")
    job_id = await producer.chat("route:c", "Hello")
    await run_worker(routed)
    result = await producer.result(job_id)
    assert result.status == "succeeded" and result.route == "c" and result.model == "gemini-2.0-flash"
    assert result.content == "[gemini-2.0-flash] You said: Hello"
    assert calls(sim) == {"gemini-2.0-flash": 1}
    assert choices("c", "gemini-2.0-flash") == before + 1


async def test_a_route_falls_back_up_the_list_past_a_model_that_is_down(producer, routed, sim):
    sim_admin(sim, "/_sim/config", {"model": "gemini-2.0-flash", "down": True})
    fragile = routed.model_copy(update={"circuit_failures": routed.attempts_per_model})
    first = await producer.chat("route:c", "first")
    await run_worker(fragile)
    result = await producer.result(first)
    assert result.status == "succeeded" and result.route == "c" and result.model == "deepseek-v3"
    assert [(a.model, a.ok) for a in result.attempts] == [("gemini-2.0-flash", False)] * 3 + [("deepseek-v3", True)]
    # its failures opened gemini's circuit: the next job skips it without a call
    second = await producer.chat("route:c", "second")
    await run_worker(fragile)
    assert (await producer.result(second)).model == "deepseek-v3"
    assert calls(sim) == {"gemini-2.0-flash": 3, "deepseek-v3": 2}
    # back up: once the circuit's open period is over, the cheapest model is chosen again
    sim_admin(sim, "/_sim/config", {"model": "gemini-2.0-flash", "down": False})

    async def open_over() -> bool:
        return await circuit_open_over(producer.redis)

    await wait_until_async(open_over, 5, "gemini's open period to end")
    third = await producer.chat("route:c", "third")
    await run_worker(fragile)
    assert (await producer.result(third)).model == "gemini-2.0-flash"


async def test_rules_choose_by_images_and_prompt_length(producer, routed, sim):
    short = await producer.chat("route:r", "Hi there")  # 8 characters
    long = await producer.chat("route:r", "Explain the theory of relativity in detail")
    image = await producer.vision("route:r", PNG_URL, "Hi")
    await run_worker(routed)
    picked = {
        name: (await producer.result(i)).model for name, i in (("short", short), ("long", long), ("image", image))
    }
    assert picked == {"short": "gpt-3.5-turbo", "long": "gpt-4.1", "image": "gpt-4o"}
    assert calls(sim) == {"gpt-3.5-turbo": 1, "gpt-4.1": 1, "gpt-4o": 1}


async def test_the_skills_model_map_is_built_in(settings, sim):
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        code = await producer.chat("route:code", "Write a sort in Python")
        fast = await producer.chat("route:fast", "Hi")
        smart = await producer.chat("route:smart", "Hi")
        await run_worker(settings)
        results = [await producer.result(i) for i in (code, fast, smart)]
    assert [(r.route, r.model) for r in results] == [
        ("code", "deepseek-coder"),
        ("fast", "gpt-3.5-turbo"),
        ("smart", "gpt-3.5-turbo"),
    ]


async def test_an_unknown_route_is_refused_at_enqueue_when_the_producer_knows_the_routes(producer):
    with pytest.raises(JobRejected) as refused:
        await producer.chat("route:chaep", "Hi")
    assert refused.value.field == "model"
    assert "no route named 'chaep'" in refused.value.message and "c, cheap, chinese" in refused.value.message
    with pytest.raises(JobRejected) as compare:
        await producer.compare(["gpt-4.1", "route:c"], "Hi")
    assert compare.value.field == "models" and "routes are for chat and vision jobs" in compare.value.message
    assert await producer.queued() == 0


async def test_an_unknown_route_fails_at_the_worker_otherwise(settings, sim, monkeypatch):
    monkeypatch.delenv("ROUTES", raising=False)
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        job_id = await producer.chat("route:only-on-some-worker", "Hi")  # this producer cannot tell
        await run_worker(settings)
        result = await producer.result(job_id)
    assert result.status == "failed" and result.error.type == "invalid_job" and result.error.field == "model"
    assert "no route named 'only-on-some-worker'" in result.error.message and "ROUTES" in result.error.message
    assert calls(sim) == {}


@pytest.mark.parametrize(
    ("routes_json", "words"),
    [
        ('{"x": {"models": []}}', 'ROUTES, in ["x"]["models"]: List should have at least 1 item'),
        ('{"x": {"models": ["gpt-4.1", "route:y"]}}', "a route lists models, not other routes"),
        ('{"bad name": {"models": ["gpt-4.1"]}}', "route name 'bad name'"),
        ('{"x": {"models": ["gpt-4.1"], "order": "cheapest"}}', 'ROUTES, in ["x"]["order"]'),
        ('{"x": {"models": ["gpt-4.1"], "rules": [{"models": ["gpt-4o"]}]}}', "a rule needs a condition"),
        (
            '{"x": {"models": ["gpt-4.1"], "rules": [{"image": true, "models": ["gpt-4o"]}]}}',
            'in ["x"]["rules"][0]: unknown key "image": did you mean "images"?',
        ),
    ],
)
def test_bad_routes_are_refused_naming_the_setting(routes_json, words, monkeypatch):
    monkeypatch.setenv("ROUTES", routes_json)
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)
    assert "ROUTES" in str(refused.value) and words in str(refused.value)


def test_a_worker_refuses_a_cost_route_with_an_unpriced_model_at_start_up(settings):
    unpriced = load_settings(_env_file=None, routes={"c": {"models": ["my-model", "gpt-4.1"], "order": "cost"}})
    env = {**settings_env(settings), "ROUTES": json.dumps({"c": {"models": ["my-model", "gpt-4.1"], "order": "cost"}})}
    out = subprocess.run([llm_router(), "worker", "--burst"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "ROUTES: route 'c' is ordered by cost but has no price for my-model: add it to PRICES" in out.stderr
    with pytest.raises(ConfigError):
        routes.check(unpriced)
    routes.check(unpriced.model_copy(update={"prices": {"my-model": Price(input=0.001, output=0.001)}}))


def test_cost_order_uses_prices_over_the_skills_table():
    settings = load_settings(_env_file=None, prices={"gpt-4.1": {"input": 0.0001, "output": 0.0001}})
    route = routes.Route(models=["qwen-max", "gemini-2.0-flash", "gpt-4.1"], order="cost")
    assert routes.choose(route, [{"role": "user", "content": "x"}], settings) == [
        "gpt-4.1",  # PRICES: 0.0001
        "gemini-2.0-flash",  # the skill: ~0.001
        "qwen-max",  # ~0.005
    ]
    listed = routes.Route(models=["qwen-max", "gemini-2.0-flash"])
    assert routes.choose(listed, [{"role": "user", "content": "x"}], settings) == ["qwen-max", "gemini-2.0-flash"]
