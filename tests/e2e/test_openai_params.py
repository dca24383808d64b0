"""Every documented OpenAI chat-completions parameter passes through the job contract (Python API
and CLI) to the gateway unchanged; `n` choices, log probabilities and JSON response formats come
back per choice, plain and streamed; what Gemini native cannot say is refused."""

import asyncio
import json
import os
import subprocess

import httpx
import pytest
from arq.constants import job_key_prefix

from harness.processes import llm_router
from producers.api import JobRejected, Producer, validate
from producers.cli import flag
from tests.helpers import API_KEY, run_worker, sim_admin
from worker.calls import gemini
from worker.calls.call import DEFAULT_COMPLETION_ESTIMATE, Call
from worker.contract import bounds
from worker.contract.models import ChatJob, ChatParams, JobResult
from worker.contract.settings import Price

HI = [{"role": "user", "content": "Hello there"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
# The parameters of `openai.types.chat.completion_create_params.CompletionCreateParamsBase`
# (openai 3.57) besides model and messages.
OPENAI_CHAT_PARAMS = {
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs", "max_completion_tokens",
    "max_tokens", "metadata", "modalities", "moderation", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
    "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options",
    "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
}  # fmt: skip
# One value for each parameter the seed contract did not have; the simulator answers in text
# (tool_choice none), JSON, with two choices and log probabilities.
NEW = {
    "max_completion_tokens": 60,
    "n": 2,
    "seed": 7,
    "response_format": {"type": "json_object"},
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"50256": -100},
    "parallel_tool_calls": False,
    "user": "user-1",
    "metadata": {"team": "search"},
    "store": False,
    "service_tier": "auto",
    "reasoning_effort": "low",
    "verbosity": "low",
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "Hello"},
    "stream_options": {"include_obfuscation": False},
    "web_search_options": {"search_context_size": "low"},
    "prompt_cache_key": "greetings",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit"},
    "moderation": {"model": "omni-moderation-latest"},
    "safety_identifier": "hash-1",
}
WITH = {"stream": True, "tools": [WEATHER_TOOL], "tool_choice": "none"}


def sent(sim) -> dict:
    """The body of the last request the simulator received."""
    return sim_admin(sim, "/_sim/requests")["requests"][-1]["body"]


def test_the_contract_has_every_openai_chat_parameter():
    assert set(ChatParams.model_fields) >= OPENAI_CHAT_PARAMS
    assert set(NEW) | set(WITH) | {"temperature", "max_tokens"} <= OPENAI_CHAT_PARAMS


def check_reached_the_gateway(body: dict, answer) -> None:
    for name, value in {**NEW, **WITH}.items():
        if name != "stream_options":
            assert body[name] == value, name
    # the job's stream options, with the usage chunk the client always asks for
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert json.loads(answer.content) == {"answer": "[gpt-4.1] You said: Hello there"}
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.logprobs["content"] and c.content == answer.content for c in answer.choices)


async def test_every_new_parameter_reaches_the_gateway_unchanged(producer, settings, sim):
    job_id = await producer.chat("gpt-4.1", "Hello there", **NEW, **WITH)
    await run_worker(settings)
    result = await producer.result(job_id)
    assert result.status == "succeeded", result.error
    check_reached_the_gateway(sent(sim), result)


def cli_args(params: dict) -> list[str]:
    """The flags for `params`, spelled as the CLI derives them from the contract."""
    args = []
    for name, value in params.items():
        spelled = flag(name, ChatJob.model_fields[name])
        if isinstance(value, bool):
            args.append(spelled if value else "--no-" + spelled[2:])
        elif isinstance(value, dict) or name == "tools":
            args += [spelled, json.dumps(value)]
        elif isinstance(value, list):
            args += [spelled, ",".join(value)]
        else:
            args += [spelled, str(value)]
    return args


def test_every_new_parameter_is_a_cli_flag_and_reaches_the_gateway(settings, sim):
    env = {**os.environ, "REDIS_URL": settings.redis_url, "QUEUE_NAME": settings.queue_name}
    command = [llm_router(), "chat", "--model", "gpt-4.1", "--message", "Hello there", *cli_args({**NEW, **WITH})]
    assert "--no-parallel-tool-calls" in command and "--no-store" in command
    out = subprocess.run([*command, "--no-wait"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()

    async def run() -> JobResult | None:
        await run_worker(settings)
        async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
            return await producer.result(job_id)

    result = asyncio.run(run())
    assert result is not None and result.status == "succeeded", result.error
    check_reached_the_gateway(sent(sim), result)
    shown = subprocess.run([llm_router(), "result", job_id], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("== choice ") == 2 and '{"answer": "[gpt-4.1] You said: Hello there"}' in shown.stdout


def test_cli_help_pairs_unset_booleans():
    out = subprocess.run([llm_router(), "chat", "--help"], capture_output=True, text=True, timeout=60)
    assert "--parallel-tool-calls / --no-parallel-tool-calls" in out.stdout
    assert "--logprobs / --no-logprobs" in out.stdout and "--no-stream " not in out.stdout


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_n_choices_are_stored_and_billed(producer, settings, sim, stream):
    one = await producer.chat("gpt-4.1", "Hello there", stream=stream)
    three = await producer.chat("gpt-4.1", "Hello there", stream=stream, n=3)
    await run_worker(settings)
    single, result = await producer.result(one), await producer.result(three)
    assert single.choices is None and result.status == "succeeded"
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert all(c.content == single.content and c.finish_reason == "stop" for c in result.choices)
    assert result.content == result.choices[0].content and result.finish_reason == "stop"
    assert result.usage.completion_tokens == 3 * single.usage.completion_tokens
    assert result.usage.prompt_tokens == single.usage.prompt_tokens
    charged = sim_admin(sim, "/_sim/stats")["charged"]["gpt-4.1"]
    assert single.cost + result.cost == pytest.approx(charged)
    assert result.cost > single.cost


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_logprobs_are_stored_per_choice(producer, settings, stream):
    job_id = await producer.chat("gpt-4.1", "Hello there", stream=stream, n=2, logprobs=True, top_logprobs=3)
    await run_worker(settings)
    result = await producer.result(job_id)
    assert len(result.choices) == 2
    for choice in result.choices:
        tokens = choice.logprobs["content"]
        assert "".join(t["token"] for t in tokens) == choice.content == "[gpt-4.1] You said: Hello there"
        assert all(t["logprob"] < 0 and t["bytes"] == list(t["token"].encode()) for t in tokens)
        assert all(len(t["top_logprobs"]) == 3 and t["top_logprobs"][0]["token"] == t["token"] for t in tokens)
    # with one choice, logprobs alone fill choices
    job_id = await producer.chat("gpt-4.1", "Hello there", stream=stream, logprobs=True)
    await run_worker(settings)
    result = await producer.result(job_id)
    assert len(result.choices) == 1 and result.choices[0].logprobs["content"][0]["top_logprobs"] == []


async def test_response_format_json_gives_json_content(producer, settings):
    mode = await producer.chat("gpt-4.1", "Hello there", response_format={"type": "json_object"})
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "greeting",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"reply": {"type": "string"}},
                "required": ["reply"],
                "additionalProperties": False,
            },
        },
    }
    structured = await producer.chat("gpt-4.1", "Hello there", response_format=schema, stream=True)
    await run_worker(settings)
    assert json.loads((await producer.result(mode)).content) == {"answer": "[gpt-4.1] You said: Hello there"}
    assert json.loads((await producer.result(structured)).content) == {"reply": "[gpt-4.1] You said: Hello there"}


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"top_logprobs": 2}, "top_logprobs", "only allowed with logprobs: true"),
        ({"top_logprobs": 2, "logprobs": False}, "top_logprobs", "only allowed with logprobs: true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
        ({"n": "3"}, "n", "valid integer"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"n": 129}, "n", "less than or equal to 128"),
        ({"seed": 1.5}, "seed", "valid integer"),
        ({"logprobs": "true"}, "logprobs", "valid boolean"),
        ({"max_completion_tokens": True}, "max_completion_tokens", "valid integer"),
        ({"logit_bias": {"50256": 101}}, "logit_bias.50256", "less than or equal to 100"),
        ({"metadata": {"team": 1}}, "metadata.team", "valid string"),
        ({"response_format": {"type": "yaml"}}, "response_format", "type must be"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "needs json_schema"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed with stream: true"),
        ({"service_tier": "cheap"}, "service_tier", "Input should be"),
        ({"modalities": ["text", "video"]}, "modalities.1", "Input should be"),
        ({"prompt_cache_key": 5}, "prompt_cache_key", "valid string"),
        ({"seeed": 1}, "seeed", "Extra inputs"),  # a typo is still refused
        (
            {"model": "gemini-2.0-flash", "gemini_native": True, "logprobs": True},
            "gemini_native",
            "logprobs cannot be sent natively",
        ),
        (
            {"model": "gemini-2.0-flash", "gemini_native": True, "logit_bias": {"1": 1}, "store": True},
            "gemini_native",
            "logit_bias, store cannot be sent natively",
        ),
        (
            {
                "model": "gemini-2.0-flash",
                "gemini_native": True,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/a"}},
                },
            },
            "gemini_native",
            "'$ref' has no Gemini responseSchema equivalent",
        ),
    ],
)
def test_bad_new_parameters_are_refused_naming_the_field(fields, field, words):
    with pytest.raises(JobRejected) as info:
        validate(ChatJob, **{"model": "gpt-4.1", "messages": HI, **fields})
    assert info.value.field == field
    assert words in info.value.message


async def test_a_foreign_job_with_a_string_n_fails_naming_it(producer, settings, redis):
    job = {"t": 1, "f": "chat", "a": [{"model": "gpt-4.1", "messages": HI, "n": "3"}], "k": {}, "et": 1}
    await redis.set(job_key_prefix + "handmade", json.dumps(job))
    await redis.zadd(settings.queue_name, {"handmade": 1})
    await run_worker(settings)
    result = await producer.result("handmade")
    assert result.status == "failed" and result.error.type == "invalid_job"
    assert result.error.field == "n" and "valid integer" in result.error.message


async def test_gemini_native_n_gives_choices(producer, settings, sim):
    settings = settings.model_copy(update={"prices": {"gemini-2.0-flash": Price(input=0.001, output=0.002)}})
    job_id = await producer.chat(
        "gemini-2.0-flash", "Hello there", gemini_native=True, n=2, seed=3, max_completion_tokens=50
    )
    await run_worker(settings)
    result = await producer.result(job_id)
    assert result.status == "succeeded", result.error
    assert [c.content for c in result.choices] == ["[gemini-2.0-flash] You said: Hello there"] * 2
    assert result.content == result.choices[0].content
    config = sent(sim)["generationConfig"]
    assert config == {"candidateCount": 2, "seed": 3, "maxOutputTokens": 50}


def test_openai_parameters_translate_to_gemini_generation_config():
    payload = {
        "messages": [{"role": "developer", "content": "Be brief."}, *HI],
        "max_tokens": 100,
        "max_completion_tokens": 80,
        "n": 3,
        "seed": 9,
        "modalities": ["text"],
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {
                    "type": "object",
                    "properties": {
                        "city": {"type": ["string", "null"], "description": "where"},
                        "days": {"type": "array", "items": {"type": "integer"}},
                    },
                    "required": ["city", "days"],
                    "additionalProperties": False,
                },
            },
        },
    }
    assert gemini.request_body(payload) == {
        "contents": [{"role": "user", "parts": [{"text": "Hello there"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "maxOutputTokens": 80,
            "seed": 9,
            "candidateCount": 3,
            "responseMimeType": "application/json",
            "responseSchema": {
                "type": "OBJECT",
                "properties": {
                    "city": {"type": "STRING", "nullable": True, "description": "where"},
                    "days": {"type": "ARRAY", "items": {"type": "INTEGER"}},
                },
                "required": ["city", "days"],
            },
        },
    }
    json_mode = gemini.request_body({"messages": HI, "response_format": {"type": "json_object"}})
    assert json_mode["generationConfig"] == {"responseMimeType": "application/json"}
    candidates = [
        {"content": {"parts": [{"text": t}]}, "finishReason": "STOP", "index": i} for i, t in ((1, "b"), (0, "a"))
    ]
    two = {"candidates": candidates}
    fields = gemini.answer_fields(two)
    assert fields["content"] == "a" and [c["content"] for c in fields["choices"]] == ["a", "b"]


def test_max_completion_tokens_counts_like_max_tokens(settings):
    def estimate(**params: object) -> int:
        return Call(resources=None, job_id="j", payload={"messages": HI, **params}, max_wait_s=0).estimate_tokens()

    prompt = estimate(max_tokens=1) - 1
    assert estimate() == prompt + DEFAULT_COMPLETION_ESTIMATE
    assert estimate(max_completion_tokens=100) == estimate(max_tokens=100) == prompt + 100
    assert estimate(max_tokens=300, max_completion_tokens=100) == prompt + 100
    assert estimate(max_completion_tokens=100, n=3) == prompt + 300
    assert estimate(n=2) == prompt + 2 * DEFAULT_COMPLETION_ESTIMATE

    over = ChatJob(model="gpt-4.1", messages=HI, max_completion_tokens=settings.max_output_tokens + 1)
    field, message = bounds.problem(over, settings, 100)
    assert field == "max_completion_tokens" and "MAX_OUTPUT_TOKENS" in message
    wide = ChatJob(model="gpt-4.1", messages=HI, max_completion_tokens=50_000)
    field, message = bounds.problem(wide, settings.model_copy(update={"model_context": {"gpt-4.1": 32_000}}), 100)
    assert field == "max_completion_tokens" and "context window" in message


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": "3"}, "n"),
        ({"n": 129}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"seed": 1.5}, "seed"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"logit_bias": {"1": 500}}, "logit_bias"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"metadata": {"a": 1}}, "metadata"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"service_tier": "gold"}, "service_tier"),
        ({"modalities": ["video"]}, "modalities"),
    ],
)
def test_simulator_range_checks_the_new_parameters(sim, params, param):
    r = httpx.post(
        sim.base_url + "/chat/completions",
        json={"model": "gpt-4.1", "messages": HI, **params},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
