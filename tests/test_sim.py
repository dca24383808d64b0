"""The simulator's own switches and routes that the client tests do not reach."""

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
