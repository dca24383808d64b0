"""The simulator's own switches and routes that the client tests do not reach."""

import json

import httpx
import pytest

from sim.faults import FaultBook, Faults
from sim.limits import Window
from tests.helpers import API_KEY, sim_admin

AUTH = {"Authorization": f"Bearer {API_KEY}"}
HELLO = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}


def post(sim, path, body, headers=AUTH):
    return httpx.post(sim.base_url + path, json=body, headers=headers)


@pytest.mark.parametrize("prefix", ["", "beta"])
def test_gemini_native_route(sim, prefix):
    base = sim.base_url.removesuffix("/v1") + f"/v1{prefix}/models"
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Explain machine learning."}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"maxOutputTokens": 1000},
    }
    r = httpx.post(f"{base}/gemini-2.0-flash:generateContent", json=body, headers=AUTH)
    assert r.status_code == 200
    data = r.json()
    assert (
        data["candidates"][0]["content"]["parts"][0]["text"] == "[gemini-2.0-flash] You said: Explain machine learning."
    )
    assert data["candidates"][0]["finishReason"] == "STOP" and data["usageMetadata"]["totalTokenCount"] > 0
    missing = httpx.post(f"{base}/gemini-9:generateContent", json=body, headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"] == {
        "code": 404,
        "message": "Model 'gemini-9' is not available",
        "status": "NOT_FOUND",
    }
    assert (
        httpx.post(f"{base}/gemini-2.0-flash:generateContent", json=body).json()["error"]["status"] == "UNAUTHENTICATED"
    )


def test_tpm_limit_and_429_headers(sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "tpm": 20})  # one call uses 6 + 7 tokens
    assert post(sim, "/chat/completions", {**HELLO, "max_tokens": 20}).status_code == 200
    r = post(sim, "/chat/completions", {**HELLO, "max_tokens": 20})
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) >= 1
    for name in (
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ):
        assert name in r.headers
    assert r.headers["x-ratelimit-limit-tokens"] == "20"
    assert post(sim, "/chat/completions", {**HELLO, "model": "gpt-4o"}).status_code == 200  # per model


def test_window_reports_reset_as_unix_time_and_frees_slots():
    window = Window()
    assert window.check(0.0, 1, 2, None, 1.0).allowed
    assert window.check(0.1, 1, 2, None, 1.0).allowed
    blocked = window.check(0.2, 1, 2, None, 1.0)
    assert not blocked.allowed and blocked.retry_after == pytest.approx(0.8)
    assert window.check(1.01, 1, 2, None, 1.0).allowed
    assert int(blocked.headers["x-ratelimit-reset-requests"]) > 1_700_000_000


def test_error_rates_follow_the_seed():
    always, never = FaultBook(Faults(error_rates={503: 1.0})), FaultBook(Faults(error_rates={500: 0.0}))
    assert [always.injected_status("m") for _ in range(5)] == [503] * 5
    assert [never.injected_status("m") for _ in range(5)] == [None] * 5
    a, b = FaultBook(Faults(error_rates={500: 0.5}), seed=7), FaultBook(Faults(error_rates={500: 0.5}), seed=7)
    assert [a.injected_status("m") for _ in range(50)] == [b.injected_status("m") for _ in range(50)]
    assert 5 < sum(a.injected_status("m") == 500 for _ in range(200)) < 195


def test_bad_requests_get_openai_style_errors(sim):
    r = httpx.post(sim.base_url + "/chat/completions", content=b"{not json", headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_parse_error"
    r = post(sim, "/chat/completions", {"model": "gpt-4.1"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_parameter"
    assert r.json()["error"]["param"] == "messages" and r.json()["error"]["request_id"].startswith("req_")
    assert post(sim, "/chat/completions", HELLO, headers={}).json()["error"]["code"] == "missing_api_key"


def test_config_rejects_unknown_switches(sim):
    r = httpx.post(sim.base_url.removesuffix("/v1") + "/_sim/config", json={"model": "gpt-4.1", "explode": True})
    assert r.status_code == 400 and "explode" in r.text


def test_credits_run_out_at_the_call_that_cannot_be_paid(sim):
    first = post(sim, "/chat/completions", HELLO).json()["usage"]
    sim_admin(sim, "/_sim/credits", {"credits": first["cost"] * 1.5})
    assert post(sim, "/chat/completions", HELLO).status_code == 200
    r = post(sim, "/chat/completions", HELLO)
    assert r.status_code == 402 and r.json()["error"]["code"] == "insufficient_credits"


# ---------------------------------------------------------------- billing like the strictest gateway

PNG = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def usage(sim, body, path="/chat/completions"):
    r = post(sim, path, body)
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def test_every_input_field_is_billed(sim):
    """Tools, legacy functions, response_format schemas, any other input field and each message's
    own fields are prompt tokens, as a gateway bills them; generation parameters are not."""
    base = usage(sim, {**HELLO, "max_tokens": 5})["prompt_tokens"]
    big = "x" * 4000  # 1,000 tokens of ASCII
    tool = {"type": "function", "function": {"name": "f", "description": big, "parameters": {"type": "object"}}}
    schema = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object", "description": big}}}
    for extra in (
        {"tools": [tool], "tool_choice": "none"},
        {"functions": [tool["function"]], "function_call": "none"},
        {"response_format": schema},
        {"prediction": {"type": "content", "content": big}},
    ):
        billed = usage(sim, {**HELLO, "max_tokens": 5, **extra})["prompt_tokens"]
        assert 1000 < billed - base < 1100, extra
    message = {"role": "user", "content": "hello", "name": big}
    assert usage(sim, {**HELLO, "messages": [message], "max_tokens": 5})["prompt_tokens"] - base > 1000
    knobs = {"temperature": 0.5, "top_p": 0.9, "seed": 3, "user": "u", "metadata": {"k": "v"}, "n": 1}
    assert usage(sim, {**HELLO, "max_tokens": 5, **knobs})["prompt_tokens"] == base


def test_chinese_is_a_token_a_character_and_never_written_past_max_tokens(sim):
    text = "机器学习是人工智能的一个分支" * 50  # 700 characters, no spaces
    english = usage(sim, {**HELLO, "messages": [{"role": "user", "content": "ab" * 350}], "max_tokens": 5})
    chinese = post(
        sim, "/chat/completions", {**HELLO, "messages": [{"role": "user", "content": text}], "max_tokens": 5}
    )
    body = chinese.json()
    assert body["usage"]["prompt_tokens"] - english["prompt_tokens"] == 700 - 175
    # the answer echoes it: cut at max_tokens, even inside a word
    assert body["usage"]["completion_tokens"] == 5 and body["choices"][0]["finish_reason"] == "length"
    tools = [{"type": "function", "function": {"name": "echo", "parameters": {"type": "object"}}}]
    called = post(
        sim,
        "/chat/completions",
        {**HELLO, "messages": [{"role": "user", "content": text}], "tools": tools, "max_tokens": 5, "n": 2},
    )
    assert called.json()["usage"]["completion_tokens"] == 10
    assert called.json()["choices"][0]["finish_reason"] == "length"


def test_an_image_is_billed_the_models_published_most(sim):
    def image_cost(model):
        content = [{"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": PNG}}]
        with_image = usage(sim, {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 5})
        plain = usage(sim, {"model": model, "messages": [{"role": "user", "content": content[:1]}], "max_tokens": 5})
        return with_image["prompt_tokens"] - plain["prompt_tokens"]

    # OpenAI's tile figures at 8 tiles; gpt-4o-mini bills 33x gpt-4o's tokens for the same dollars
    assert image_cost("gpt-4o") == 85 + 8 * 170 and image_cost("gpt-4o-mini") == 2833 + 8 * 5667
    assert image_cost("claude-3-sonnet") == 1600 and image_cost("gemini-2.0-flash") == 16 * 258


def test_reasoning_models_refuse_max_tokens(sim):
    r = post(sim, "/chat/completions", {**HELLO, "model": "o3-mini", "max_tokens": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert "max_completion_tokens" in r.json()["error"]["message"]
    assert post(sim, "/chat/completions", {**HELLO, "model": "o3-mini", "max_completion_tokens": 5}).status_code == 200


def test_bill_at_bound_bills_each_byte_of_the_body_and_the_whole_cap(sim):
    sim_admin(sim, "/_sim/config", {"bill_at_bound": True})
    content = [{"type": "text", "text": "这是什么"}, {"type": "image_url", "image_url": {"url": PNG}}]
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], "max_tokens": 7, "n": 3}
    blank = {
        **body,
        "messages": [{"role": "user", "content": [content[0], {"type": "image_url", "image_url": {"url": ""}}]}],
    }
    sent = len(json.dumps(blank, ensure_ascii=False, separators=(",", ":")).encode())
    billed = usage(sim, body)
    assert billed["prompt_tokens"] == sent + 48_169 and billed["completion_tokens"] == 7 * 3
    assert billed["cost"] == pytest.approx(((sent + 48_169) * 0.0025 + 21 * 0.01) / 1000)
    # no cap: each choice as long as the model's context window
    uncapped = usage(sim, {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "n": 4})
    assert uncapped["completion_tokens"] == 4 * 64_000
    # Gemini's native body, as received: maxOutputTokens, candidateCount, inline images
    native = {
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "hi"}, {"inline_data": {"mime_type": "image/png", "data": PNG.split(",")[1]}}],
            }
        ],
        "generationConfig": {"maxOutputTokens": 9, "candidateCount": 2},
    }
    blank = json.loads(json.dumps(native))
    blank["contents"][0]["parts"][1]["inline_data"]["data"] = ""
    sent = len(json.dumps(blank, separators=(",", ":")).encode())
    url = sim.base_url + "/models/gemini-2.0-flash:generateContent"
    meta = httpx.post(url, json=native, headers=AUTH).json()["usageMetadata"]
    assert (meta["promptTokenCount"], meta["candidatesTokenCount"]) == (sent + 48_169, 18)


def test_bill_at_bound_walks_the_body_with_the_workers_own_bound():
    # One byte-walker for the prompt bound: the simulator bills `bill_at_bound` calls with the
    # budgets' own (orjson-based), not a copy that could drift from it.
    import inspect

    from sim import answers, reply
    from worker.limits import tokens

    assert reply.input_bound is tokens.input_bound
    assert answers.NOT_INPUT is tokens.NOT_INPUT
    assert "_image_refs" not in vars(answers) and "bound_prompt_tokens" not in vars(answers)
    assert "orjson.dumps" in inspect.getsource(tokens.wire_json)


def test_reset_keeps_the_switches_it_was_started_with(tmp_path):
    # `POST /_sim/reset` forgets what was set at run time (switches, counters, credits), never
    # the CLI flags it was started with: a simulator started strict stays strict.
    from harness.processes import LLMRouterProcess, answers
    from tests.helpers import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flags = ["--bill-at-bound", "--latency-ms", "5", "--error-rate", "500=0.01"]
    proc = LLMRouterProcess("sim", "--port", str(port), "--api-key", API_KEY, *flags, log_path=tmp_path / "sim.log")
    try:
        proc.wait_started(lambda: answers(base + "/_sim/config"), 30, "llm-router sim")
        started = sim_admin(base, "/_sim/config")["default"]
        assert started["bill_at_bound"] and started["latency_ms"] == 5 and started["error_rates"] == {"500": 0.01}
        sim_admin(base, "/_sim/config", {"bill_at_bound": False, "down": True})
        sim_admin(base, "/_sim/config", {"model": "gpt-4.1", "hang_s": 3})
        sim_admin(base, "/_sim/credits", {"credits": 1})
        sim_admin(base, "/_sim/reset", {})
        assert sim_admin(base, "/_sim/config") == {"default": started, "models": {}}
    finally:
        proc.stop()


@pytest.mark.parametrize("how", ["drop", "hang"])
@pytest.mark.parametrize("stream", [False, True])
def test_bill_then_bills_the_call_and_never_answers_it(sim, how, stream):
    sim_admin(sim, "/_sim/config", {"bill_then": how})
    body = {**HELLO, "max_tokens": 5, **({"stream": True} if stream else {})}
    url = sim.base_url + "/chat/completions"
    with pytest.raises(httpx.TransportError), httpx.stream("POST", url, json=body, headers=AUTH, timeout=0.5) as r:
        for _ in r.iter_lines():
            pass
    charged = sim_admin(sim, "/_sim/stats")["charged"]
    assert charged["gpt-4.1"] > 0
    assert sim_admin(sim, "/_sim/config")["default"]["bill_then"] == how
    with pytest.raises(httpx.HTTPStatusError):
        sim_admin(sim, "/_sim/config", {"bill_then": "later"})
