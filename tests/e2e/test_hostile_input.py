"""Hostile input below the ingress: JSON nested past MAX_JSON_DEPTH and a completion window past
BATCH_MAX_WINDOW_S are refused by the Python API, the CLI and the schedules file, naming the
field and the setting, before anything is written to Redis (a real redis-server)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from harness.processes import llm_router, settings_env
from producers import BatchRejected
from producers.api import JobRejected, validate
from worker.batches import schedules
from worker.contract import bounds
from worker.contract.models import JOB_KINDS, ChatJob
from worker.contract.settings import ConfigError

HELLO = [{"role": "user", "content": "hello"}]


def nested(levels: int) -> object:
    """Arrays `levels` deep (built in a loop: any depth)."""
    value: object = "leaf"
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture
async def producer(make_producer, settings):
    return await make_producer(settings, own_settings=True)


@pytest.mark.parametrize("levels", [70, 260, 100_000])
async def test_json_nested_past_the_bound_is_refused_naming_the_field(producer, redis, levels):
    """Past MAX_JSON_DEPTH (64), and past what the record's JSON writers can write (about 250),
    and far past Python's recursion limit: a JobRejected naming the field, nothing enqueued."""
    deep_tools = validate(ChatJob, model="gpt-4.1", messages=HELLO, tools=[{"type": "function", "x": nested(levels)}])
    with pytest.raises(JobRejected) as refused:
        await producer.enqueue(deep_tools)
    assert refused.value.field == "tools" and "MAX_JSON_DEPTH=64" in refused.value.message
    deep_message = validate(ChatJob, model="gpt-4.1", messages=[{**HELLO[0], "tool_calls": nested(levels)}])
    with pytest.raises(JobRejected) as refused:
        await producer.enqueue(deep_message)
    assert refused.value.field == "messages"
    assert await redis.keys("*") == []


async def test_json_within_the_bound_is_enqueued_and_workers_check_it_too(producer, settings):
    job = validate(ChatJob, model="gpt-4.1", messages=HELLO, tools=[{"type": "function", "x": nested(60)}])
    assert await producer.enqueue(job)
    # a record another writer made is checked by the worker with the same rule (worker.calls.jobs: bounds.problem)
    deep = validate(ChatJob, model="gpt-4.1", messages=HELLO, response_format={"type": "json_object", "x": nested(80)})
    assert bounds.problem(deep, settings, 100) == (
        "response_format",
        "nests arrays and objects over MAX_JSON_DEPTH=64 levels deep: flatten it",
    )


def line(i: int) -> dict:
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": f"prompt {i}"}], "max_tokens": 20}
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


@pytest.mark.parametrize("window", ["99999999999999999999d", "8d", "9" * 400 + "s"])
async def test_a_completion_window_past_the_bound_is_refused_before_any_write(producer, redis, window):
    """(It used to reach Redis as an expiry Redis refuses: a 503 "Redis is unavailable" over HTTP,
    and the batch's record left without a TTL.)"""
    with pytest.raises(BatchRejected) as refused:
        await producer.batches.submit([line(1)], completion_window=window)
    error = refused.value.errors[0]
    assert error.param == "completion_window" and error.code == "invalid_completion_window"
    assert "BATCH_MAX_WINDOW_S=604800" in error.message
    assert await redis.keys("*") == []
    assert (await producer.batches.submit([line(1)], completion_window="7d")).completion_window == "7d"


@pytest.mark.parametrize(("window", "says"), [("30d", "BATCH_MAX_WINDOW_S=604800"), ("abc", "not a duration")])
def test_the_cli_refuses_a_bad_window_in_one_line_naming_the_flag(settings, tmp_path, redis_url, window, says):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(line(1)) + "\n")
    env = {**os.environ, **settings_env(settings)}
    run = subprocess.run(
        [llm_router(), "batch", "submit", str(requests), "--window", window],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, (run.stdout, run.stderr)
    [said] = run.stderr.strip().splitlines()
    assert (
        said.startswith(f"llm-router: invalid --window (completion_window): '{window}'")
        and says in said
        and "24h" in said
    ), said


def test_a_schedule_with_a_window_past_the_bound_refuses_the_start(settings, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(line(1)) + "\n")
    file = tmp_path / "schedules.toml"
    file.write_text(f'[[schedule]]\nname = "nightly"\ncron = "0 2 * * *"\ninput = "{requests}"\nwindow = "30d"\n')
    with pytest.raises(ConfigError, match=r"schedule 'nightly': window: '30d' is over BATCH_MAX_WINDOW_S=604800"):
        schedules.load(settings.model_copy(update={"schedules_file": str(file)}))
    file.write_text(f'[[schedule]]\nname = "nightly"\ncron = "0 2 * * *"\ninput = "{requests}"\nwindow = "7d"\n')
    assert schedules.load(settings.model_copy(update={"schedules_file": str(file)}))[0].window == "7d"


def test_the_depth_check_may_skip_the_fields_left_at_their_defaults():
    """bounds.depth_problem reads only the fields a job was given: each default is None or a scalar."""
    for cls in JOB_KINDS.values():
        for name, field in cls.model_fields.items():
            if not field.is_required():
                default = field.get_default(call_default_factory=True)
                assert default is None or isinstance(default, (str, int, float, bool)), (cls.__name__, name)
    job = validate(ChatJob, model="gpt-4.1", messages=HELLO).model_copy(update={"tools": [nested(80)]})
    assert bounds.depth_problem(job, 64) is not None  # set after validation: still read


def parts(n: int) -> list[dict]:
    return [{"type": "text", "text": f"part {i}"} for i in range(n)]


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
LISTS = [  # (field given, its value, the field named, the setting named)
    ("tools", [TOOL] * 129, "tools", "MAX_TOOLS=128"),
    ("functions", [{"name": "f"}] * 129, "functions", "MAX_TOOLS=128"),
    ("stop", ["x"] * 17, "stop", "MAX_STOP=16"),
    ("messages", HELLO * 10_001, "messages", "MAX_MESSAGES=10000"),
    ("messages", [{"role": "user", "content": parts(257)}], "messages.0.content", "MAX_CONTENT_PARTS=256"),
]


@pytest.mark.parametrize(("given", "value", "field", "setting"), LISTS, ids=[x[3] for x in LISTS])
async def test_lists_past_their_bound_are_refused_naming_the_field_and_the_setting(
    producer, redis, given, value, field, setting
):
    job = validate(ChatJob, **{"model": "gpt-4.1", "messages": HELLO, given: value})
    with pytest.raises(JobRejected) as refused:
        await producer.enqueue(job)
    assert refused.value.field == field and setting in refused.value.message
    assert await redis.keys("*") == []
    at_the_bound = value[:-1] if field != "messages.0.content" else [{"role": "user", "content": parts(256)}]
    assert await producer.enqueue(validate(ChatJob, **{"model": "gpt-4.1", "messages": HELLO, given: at_the_bound}))


async def test_the_size_is_checked_before_the_depth_walk(producer):
    """A job over MAX_JOB_BYTES is refused for its size, whatever it holds: the depth of its
    fields is walked only on a job of bounded size."""
    big_and_deep = [{"type": "function", "x": nested(80), "description": "y" * 5_000_000}]
    with pytest.raises(JobRejected) as refused:
        await producer.enqueue(validate(ChatJob, model="gpt-4.1", messages=HELLO, tools=big_and_deep))
    assert refused.value.field == "job" and "MAX_JOB_BYTES=4194304" in refused.value.message


WRONG_TYPES = [
    ("completion_window", 86400),
    ("completion_window", None),
    ("metadata", ["a", "b"]),
    ("metadata", "run=7"),
    ("skip_invalid", "yes"),
    ("endpoint", {"url": "/v1/chat/completions"}),
    ("endpoint", ["/v1/chat/completions"]),
    ("batch_id", 7),
    ("budget_usd", "10"),
    ("budget_usd", True),
    ("callback_url", {"url": "https://hooks.example.com"}),
]


@pytest.mark.parametrize(("option", "value"), WRONG_TYPES, ids=[f"{o}={v!r}" for o, v in WRONG_TYPES])
async def test_a_batch_option_of_the_wrong_type_is_refused_naming_it(producer, redis, option, value):
    with pytest.raises(BatchRejected) as refused:
        await producer.batches.submit([line(1)], **{option: value})
    error = refused.value.errors[0]
    assert error.param == option and f"{option} must be" in error.message, error
    assert await redis.keys("*") == []
