"""The AIsa client against the simulator (a real HTTP server): answers, streams, and every error class."""

import asyncio
import base64
import json

import httpx
import pytest
from aiohttp import web

from tests.helpers import API_KEY, free_port, sim_admin
from worker.calls import errors, gemini
from worker.calls.client import AIsaClient, _status_error, _StreamAssembler
from worker.calls.policy import Action, action_for

HELLO = [{"role": "user", "content": "Hello there"}]


def retried(exc: errors.AIsaError) -> bool:
    """The policy retries this error on the same model (worker.calls.policy decides, not the error)."""
    return action_for(exc.error_class) in (Action.RETRY_AFTER, Action.BACKOFF)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


@pytest.fixture
async def client(sim):
    async with AIsaClient(sim.base_url, API_KEY, timeout=1, connect_timeout=1) as c:
        yield c


async def test_completion_has_content_usage_cost_and_credits(client, sim):
    c = await client.chat({"model": "gpt-4.1", "messages": HELLO})
    assert c.content == "[gpt-4.1] You said: Hello there"
    assert c.finish_reason == "stop"
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens > 0
    stats = sim_admin(sim, "/_sim/stats")
    assert c.cost == pytest.approx(stats["charged"]["gpt-4.1"])
    assert c.credits_remaining == pytest.approx(100 - c.cost)
    assert c.rate_limits["limit-requests"] == 1_000_000 and c.rate_limits["remaining-requests"] == 999_999


async def test_stream_is_assembled_with_ttft_and_final_usage(client):
    plain = await client.chat({"model": "claude-3-sonnet", "messages": HELLO})
    c = await client.chat({"model": "claude-3-sonnet", "messages": HELLO, "stream": True})
    assert c.content == plain.content
    assert c.usage == plain.usage and c.cost == plain.cost
    assert c.ttft_s is not None and 0 < c.ttft_s <= c.latency_s


async def test_max_tokens_cuts_the_answer(client):
    c = await client.chat({"model": "gpt-4.1", "messages": HELLO, "max_tokens": 3})
    assert c.finish_reason == "length" and c.usage.completion_tokens <= 3


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls(client, stream):
    c = await client.chat(
        {
            "model": "gpt-4.1",
            "messages": [{"role": "user", "content": "Tokyo"}],
            "tools": [WEATHER_TOOL],
            "stream": stream,
        }
    )
    assert c.finish_reason == "tool_calls" and c.content is None
    (call,) = c.tool_calls
    assert call["function"] == {"name": "get_weather", "arguments": '{"location": "Tokyo"}'}
    assert call["id"].startswith("call_")


@pytest.mark.parametrize("stream", [False, True])
async def test_legacy_function_call(client, stream):
    c = await client.chat(
        {
            "model": "gpt-4.1",
            "messages": [{"role": "user", "content": "Tokyo"}],
            "functions": [WEATHER_TOOL["function"]],
            "function_call": "auto",
            "stream": stream,
        }
    )
    assert c.finish_reason == "function_call"
    assert c.function_call == {"name": "get_weather", "arguments": '{"location": "Tokyo"}'}


async def test_models_lists_the_catalog(client):
    models = await client.models()
    assert {"gpt-4.1", "claude-3-sonnet", "gemini-2.0-flash", "qwen-max", "deepseek-v3", "grok-2"} <= set(models)


async def test_wrong_key_is_authentication_error(sim):
    async with AIsaClient(sim.base_url, "wrong") as c:
        with pytest.raises(errors.AuthenticationError) as info:
            await c.chat({"model": "gpt-4.1", "messages": HELLO})
    assert info.value.status == 401 and info.value.code == "invalid_api_key"
    assert not retried(info.value)


async def test_no_credits_is_insufficient_credits(client, sim):
    sim_admin(sim, "/_sim/credits", {"credits": 0})
    with pytest.raises(errors.InsufficientCreditsError) as info:
        await client.chat({"model": "gpt-4.1", "messages": HELLO})
    assert info.value.status == 402 and info.value.code == "insufficient_credits"


async def test_unknown_model_is_model_not_found(client):
    with pytest.raises(errors.ModelNotFoundError) as info:
        await client.chat({"model": "gpt-9", "messages": HELLO})
    assert info.value.code == "model_not_found" and "gpt-9" in info.value.message


async def test_bad_parameter_is_bad_request(client):
    with pytest.raises(errors.BadRequestError) as info:
        await client.chat({"model": "gpt-4.1", "messages": HELLO, "temperature": 5})
    assert info.value.status == 400 and "temperature" in info.value.message
    assert type(info.value) is errors.BadRequestError


async def test_invalid_base64_image_is_bad_request(client):
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]}]
    with pytest.raises(errors.BadRequestError, match="base64"):
        await client.chat({"model": "gpt-4o", "messages": bad})


async def test_too_long_prompt_is_context_length_error(client):
    with pytest.raises(errors.ContextLengthError) as info:
        await client.chat({"model": "tiny-context", "messages": [{"role": "user", "content": "word " * 100}]})
    assert info.value.code == "context_length_exceeded"


async def test_rate_limit_carries_retry_after(client, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "rpm": 1})
    await client.chat({"model": "gpt-4.1", "messages": HELLO})
    with pytest.raises(errors.RateLimitError) as info:
        await client.chat({"model": "gpt-4.1", "messages": HELLO})
    assert info.value.status == 429 and retried(info.value)
    assert 50 <= info.value.retry_after <= 60  # the one-minute window has just begun
    assert sim_admin(sim, "/_sim/stats")["rate_limited"] == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_upstream_failures_are_server_errors(client, sim, status):
    sim_admin(sim, "/_sim/config", {"fail_next": [status]})
    with pytest.raises(errors.ServerError) as info:
        await client.chat({"model": "gpt-4.1", "messages": HELLO})
    assert info.value.status == status and retried(info.value)
    assert (await client.chat({"model": "gpt-4.1", "messages": HELLO})).content  # only the next call failed


async def test_down_model_is_server_error_others_fine(client, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": True})
    with pytest.raises(errors.ServerError):
        await client.chat({"model": "gpt-4.1", "messages": HELLO})
    assert (await client.chat({"model": "gpt-4o", "messages": HELLO})).content


async def test_hang_past_timeout_is_timeout_error(client, sim):
    sim_admin(sim, "/_sim/config", {"hang_s": 3})
    with pytest.raises(errors.TimeoutError):
        await client.chat({"model": "gpt-4.1", "messages": HELLO})


async def test_nothing_listening_is_connection_error():
    async with AIsaClient(f"http://127.0.0.1:{free_port()}/v1", API_KEY) as c:
        with pytest.raises(errors.ConnectionError):
            await c.chat({"model": "gpt-4.1", "messages": HELLO})


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_body_is_malformed_response(client, sim, stream):
    sim_admin(sim, "/_sim/config", {"malformed": True})
    with pytest.raises(errors.MalformedResponseError, match="not JSON"):
        await client.chat({"model": "gpt-4.1", "messages": HELLO, "stream": stream})


async def test_stream_cut_midway_is_malformed_response(client, sim):
    sim_admin(sim, "/_sim/config", {"cut_stream_after": 3})
    with pytest.raises(errors.MalformedResponseError):
        await client.chat({"model": "gpt-4.1", "messages": HELLO, "stream": True})


def test_error_event_inside_a_stream_fails_the_call():
    stream = _StreamAssembler("m", 0.0)
    stream.feed('{"choices": [{"delta": {"content": "partial"}}]}')
    with pytest.raises(errors.RateLimitError):
        stream.feed('{"error": {"type": "rate_limit_error", "message": "slow down"}}')
    with pytest.raises(errors.ServerError, match="upstream broke"):
        _StreamAssembler("m", 0.0).feed('{"error": {"message": "upstream broke", "type": "upstream_error"}}')


def test_stream_without_done_fails():
    stream = _StreamAssembler("m", 0.0)
    stream.feed('{"choices": [{"delta": {"content": "hi"}, "finish_reason": "stop"}]}')
    with pytest.raises(errors.MalformedResponseError, match=r"\[DONE\]"):
        stream.finish(0.1, httpx.Headers())


@pytest.mark.parametrize(
    ("status", "body", "cls", "code", "message"),
    [
        (
            502,
            b"<html>Bad Gateway</html>",
            errors.ServerError,
            None,
            "HTTP 502, body not JSON: <html>Bad Gateway</html>",
        ),
        (
            401,
            b'{"error": {"type": "authentication_error", "code": "revoked_api_key", "message": "revoked"}}',
            errors.AuthenticationError,
            "revoked_api_key",
            "revoked",
        ),
        (
            404,
            b'{"error": {"code": "model_not_found", "message": "Model \'xyz\' is not available"}}',
            errors.ModelNotFoundError,
            "model_not_found",
            "Model 'xyz' is not available",
        ),
        (
            429,
            b'{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}',
            errors.RateLimitError,
            "RESOURCE_EXHAUSTED",
            "quota",
        ),
        (418, b"", errors.APIStatusError, None, "HTTP 418"),
    ],
)
def test_every_documented_error_shape_is_read(status, body, cls, code, message):
    err = _status_error(httpx.Response(status, content=body, headers={"retry-after": "2"}))
    assert type(err) is cls and err.code == code and err.message == message and err.status == status
    assert err.retry_after == (2 if status == 429 else None)


async def test_plain_openai_server_without_extensions():
    from tests.plain_openai import create_app

    runner = web.AppRunner(create_app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with AIsaClient(f"http://127.0.0.1:{port}/v1", API_KEY) as c:
            plain = await c.chat({"model": "any", "messages": HELLO})
            streamed = await c.chat({"model": "any", "messages": HELLO, "stream": True})
            with pytest.raises(errors.ModelNotFoundError):
                await c.models()  # no /v1/models: a clear 404, not a crash
    finally:
        await runner.cleanup()
    assert plain.content == "plain answer to Hello there" and plain.cost is None and plain.credits_remaining is None
    assert plain.usage.total_tokens == 15
    assert streamed.content.strip() == plain.content and streamed.usage is None and streamed.cost is None


async def test_cookies_a_gateway_sets_are_kept_and_sent_back():
    """The client reads Set-Cookie only from answers that carry one (worker.calls.client._Cookies): what
    httpx keeps and sends back stays the same."""
    seen: list[str | None] = []

    async def completions(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        answer = web.json_response(
            {"model": "any", "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}]}
        )
        if len(seen) == 2:  # two cookies, one with a date (a comma in it)
            answer.set_cookie("lb", "node-7")
            answer.set_cookie("zone", "b", expires="Wed, 01 Jan 2099 00:00:00 GMT")
        return answer

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with AIsaClient(f"http://127.0.0.1:{port}/v1", API_KEY) as c:
            for _ in range(4):
                assert (await c.chat({"model": "any", "messages": HELLO})).content == "ok"
    finally:
        await runner.cleanup()
    assert seen[:2] == [None, None]
    assert [sorted(cookies.split("; ")) for cookies in seen[2:]] == [["lb=node-7", "zone=b"]] * 2


async def test_a_plain_chat_call_straight_to_aiohttp_is_the_call_httpx_makes(monkeypatch):
    """A plain chat call skips httpx's objects (worker.calls.client AIsaClient._chat): the gateway sees
    the same request, and the client reads the same answer (headers in any case, repeated ones,
    a gzip-encoded body, an error's Retry-After and body, gzip-encoded too) as through httpx."""
    import gzip

    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)  # a proxy from the environment: httpx sends every call
    seen: list[tuple[dict[str, str], bytes]] = []
    answer = {"model": "any", "choices": [{"index": 0, "message": {"content": "ok é"}, "finish_reason": "stop"}]}

    async def completions(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(({k.lower(): v for k, v in request.headers.items()}, body))
        ask = json.loads(body)["messages"][0]["content"]
        if ask.startswith("limited"):
            error = json.dumps({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}).encode()
            zipped = {"Content-Encoding": "gzip"} if ask.endswith("gzip") else {}
            return web.Response(
                body=gzip.compress(error) if zipped else error,
                status=429,
                content_type="application/json",
                headers={"Retry-After": "3", **zipped},
            )
        headers = {"X-RateLimit-Remaining-Requests": "7", "x-ratelimit-limit-requests": "10"}
        if ask == "gzip":
            return web.Response(
                body=gzip.compress(json.dumps(answer).encode()),
                content_type="application/json",
                headers={**headers, "Content-Encoding": "gzip"},
            )
        return web.json_response(answer, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    got: list[list[object]] = []
    try:
        for direct in (True, False):
            async with AIsaClient(f"http://127.0.0.1:{port}/v1", API_KEY) as c:
                assert c._direct is not None
                if not direct:
                    c._direct = None  # through httpx, as before
                mine: list[object] = []
                for ask in ("plain", "gzip"):
                    done = await c.chat({"model": "any", "messages": [{"role": "user", "content": ask}], "n": 1})
                    mine.append(done.model_dump(exclude={"latency_s"}))
                for ask in ("limited", "limited gzip"):
                    with pytest.raises(errors.RateLimitError) as limited:
                        await c.chat({"model": "any", "messages": [{"role": "user", "content": ask}]})
                    mine.append((limited.value.message, limited.value.code, limited.value.retry_after))
                got.append(mine)
    finally:
        await runner.cleanup()
    assert got[0] == got[1]
    assert got[0][0]["content"] == "ok é" and got[0][0]["rate_limits"] == {
        "remaining-requests": 7,
        "limit-requests": 10,
    }
    assert got[0][2] == got[0][3] == ("slow down", "rate_limit_exceeded", 3)
    assert len(seen) == 8 and seen[:4] == seen[4:]


async def test_concurrent_calls_share_the_connection_pool(client, sim):
    results = await asyncio.gather(
        *(client.chat({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"n{i}"}]}) for i in range(40))
    )
    assert sorted(r.content for r in results) == sorted(f"[gpt-4o-mini] You said: n{i}" for i in range(40))
    assert sim_admin(sim, "/_sim/stats")["calls"]["gpt-4o-mini"] == 40


# ---------------------------------------------------------------- Gemini native (generateContent)

PIXEL = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x01" * 16).decode()


def test_openai_request_translates_to_gemini_body():
    payload = {
        "model": "gemini-2.0-flash",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
                ],
            },
            {"role": "assistant", "content": "A pixel."},
            {"role": "user", "content": "Sure?"},
        ],
        "temperature": 0.7,
        "max_tokens": 100,
        "top_p": 0.9,
        "stop": "END",
    }
    assert gemini.request_body(payload) == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is this?"},
                    {"inline_data": {"mime_type": "image/png", "data": PIXEL.split(",")[1]}},
                ],
            },
            {"role": "model", "parts": [{"text": "A pixel."}]},
            {"role": "user", "parts": [{"text": "Sure?"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.7, "maxOutputTokens": 100, "topP": 0.9, "stopSequences": ["END"]},
    }


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y.png"}]}]},
            "inline",
        ),
        ({"messages": HELLO, "tools": [WEATHER_TOOL]}, "tools"),
        ({"messages": [*HELLO, {"role": "tool", "tool_call_id": "c", "content": "sunny"}]}, "tool results"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "user or assistant"),
    ],
)
def test_what_gemini_native_cannot_say_is_refused(payload, says):
    with pytest.raises(ValueError, match=says):
        gemini.request_body(payload)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("OTHER", "other"),
    ],
)
def test_gemini_finish_reasons_map_to_openai(reason, finish):
    body = {"candidates": [{"content": {"parts": [{"text": "a"}, {"text": "b"}]}, "finishReason": reason}]}
    assert gemini.answer_fields(body)["finish_reason"] == finish and gemini.answer_fields(body)["content"] == "ab"


def test_gemini_blocked_prompt_and_thinking_tokens():
    blocked = gemini.answer_fields(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}}
    )
    assert blocked["content"] is None and blocked["finish_reason"] == "content_filter"
    meta = {"promptTokenCount": 5, "candidatesTokenCount": 7, "thoughtsTokenCount": 3, "totalTokenCount": 15}
    assert gemini.answer_fields({"candidates": [{"finishReason": "STOP"}], "usageMetadata": meta})["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 10,
        "total_tokens": 15,
    }
    with pytest.raises(ValueError, match="no candidates"):
        gemini.answer_fields({})


async def test_gemini_native_answers_like_chat_completions(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain machine learning."}]
    native = await client.generate_content("gemini-2.0-flash", {"model": "gemini-2.0-flash", "messages": messages})
    chat = await client.chat({"model": "gemini-2.0-flash", "messages": messages})
    assert native.content == chat.content == "[gemini-2.0-flash] You said: Explain machine learning."
    assert native.model == "gemini-2.0-flash" and native.finish_reason == "stop"
    assert (
        native.usage == chat.usage
        and native.usage.prompt_tokens
        > (await client.chat({"model": "gemini-2.0-flash", "messages": messages[1:]})).usage.prompt_tokens
    )  # the system instruction counted
    assert native.cost is None and native.cost_source == "unknown" and native.credits_remaining is None
    assert native.rate_limits["limit-requests"] == 1_000_000


async def test_gemini_native_image_part_and_max_tokens(client):
    question = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": PIXEL}}],
        }
    ]
    c = await client.generate_content("gemini-1.5-flash", {"messages": question})
    assert c.content == "[gemini-1.5-flash] I see a image/png image of 24 bytes. You asked: What?"
    cut = await client.generate_content("gemini-2.0-flash", {"messages": HELLO, "max_tokens": 6})
    assert (
        cut.finish_reason == "length" and cut.usage.completion_tokens <= 6 and cut.content == "[gemini-2.0-flash] You"
    )


async def test_gemini_native_errors_are_typed(client, sim):
    with pytest.raises(errors.ModelNotFoundError) as info:
        await client.generate_content("gemini-9", {"messages": HELLO})
    assert info.value.status == 404 and info.value.code == "NOT_FOUND" and info.value.error_class == "not_found"
    sim_admin(sim, "/_sim/config", {"model": "gemini-2.0-flash", "fail_next": [429], "retry_after_s": 7})
    with pytest.raises(errors.RateLimitError) as limited:
        await client.generate_content("gemini-2.0-flash", {"messages": HELLO})
    assert limited.value.code == "RESOURCE_EXHAUSTED" and limited.value.retry_after == 7
    with pytest.raises(errors.BadRequestError, match="inline"):
        await client.generate_content(
            "gemini-2.0-flash",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y.png"}]}]},
        )


def test_gemini_429_retry_info_is_the_retry_after():
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "34s"}
    body = json.dumps(
        {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": [retry_info]}}
    )
    assert _status_error(httpx.Response(429, content=body)).retry_after == 34
    headed = _status_error(httpx.Response(429, content=body, headers={"retry-after": "2"}))
    assert headed.retry_after == 2  # the header first


@pytest.mark.parametrize(
    "faults, stream, cls, billable",
    [
        ({"fail_next": [429]}, False, errors.RateLimitError, False),  # refused: nothing ran
        ({"fail_next": [400]}, False, errors.BadRequestError, False),
        ({"fail_next": [402]}, False, errors.InsufficientCreditsError, False),
        ({"fail_next": [503]}, False, errors.ServerError, True),  # may come after the model ran
        ({"bill_then": "drop"}, False, errors.ConnectionError, True),  # dropped after it was sent
        ({"bill_then": "drop"}, True, errors.MalformedResponseError, True),  # a stream cut midway
        ({"bill_then": "hang"}, False, errors.TimeoutError, True),  # a read timeout
        ({"stream_rate_limit_after": 1}, True, errors.RateLimitError, True),  # a 429 after a 200: it ran
        ({"malformed": True}, False, errors.MalformedResponseError, True),
    ],
)
async def test_a_failure_says_whether_the_gateway_may_have_billed_it(client, sim, faults, stream, cls, billable):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", **faults})
    with pytest.raises(cls) as failed:
        await client.chat({"model": "gpt-4.1", "messages": HELLO, "stream": stream})
    assert failed.value.billable is billable


async def test_a_request_never_sent_is_not_billable():
    # nothing listening: the connection was never made, so the request never left
    async with AIsaClient(f"http://127.0.0.1:{free_port()}/v1", API_KEY, timeout=1, connect_timeout=1) as c:
        with pytest.raises(errors.ConnectionError) as failed:
            await c.chat({"model": "gpt-4.1", "messages": HELLO})
    assert failed.value.billable is False


def test_only_a_connect_failure_counts_as_never_sent():
    # the aiohttp transport raises httpx.ConnectTimeout for a server's disconnect too: the aiohttp
    # error behind it decides
    import aiohttp

    from worker.calls.client import _never_sent

    def mapped(cause: BaseException) -> httpx.ConnectTimeout:
        exc = httpx.ConnectTimeout(str(cause))
        exc.__cause__ = cause
        return exc

    assert _never_sent(mapped(aiohttp.ConnectionTimeoutError()), aiohttp.ConnectionTimeoutError())
    disconnect = aiohttp.ServerDisconnectedError()
    assert not _never_sent(mapped(disconnect), disconnect)
    read = aiohttp.SocketTimeoutError()
    assert not _never_sent(mapped(read), read)
    plain = httpx.ConnectError("refused")
    assert _never_sent(plain, plain) and not _never_sent(httpx.ReadTimeout("slow"), httpx.ReadTimeout("slow"))
