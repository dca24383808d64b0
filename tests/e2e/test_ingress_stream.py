"""Live streams through the HTTP ingress: a real `llm-router api` process and a real
`llm-router worker` against a private redis-server and the simulator. The worker streams from
the simulator and publishes the deltas to the job's Redis stream; the ingress relays them as
our SSE events (`GET /v1/jobs/{id}/events`, read with httpx-sse) and as OpenAI's chunks
(`POST /v1/chat/completions` with `stream: true`, read with the official `openai` SDK)."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass

import httpx
import openai
import pytest
from httpx_sse import aconnect_sse, connect_sse
from redis import Redis

from harness.wait import wait_until
from tests.helpers import sim_admin
from tests.ingress import Ingress, ingress_settings, running
from worker.contract.keys import done_channel, events_key, job_key, result_key
from worker.contract.models import JobResult

PROMPT = "one two three four five six seven eight nine ten eleven twelve"


@dataclass
class Stack(Ingress):
    redis: Redis

    def enqueue(self, model: str, stream: bool = True, **extra: object) -> str:
        job = {"kind": "chat", "model": model, "messages": [{"role": "user", "content": PROMPT}], **extra}
        if stream:
            job["stream"] = True
        response = self.http().post("/v1/jobs", json=job)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def events(self, job_id: str, token: str = "tok-a", last_event_id: str | None = None) -> list[tuple[str, dict]]:
        """Every event of the job's stream, until its `result`: (name, data) pairs (ids under `_id`)."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        got = []
        with self.http(token) as http, connect_sse(http, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as sse:
            assert sse.response.status_code == 200
            assert sse.response.headers["content-type"].startswith("text/event-stream")
            for event in sse.iter_sse():
                got.append((event.event, {**json.loads(event.data), "_id": event.id}))
        return got

    def result(self, job_id: str) -> dict:
        return dict(self.http().get(f"/v1/jobs/{job_id}", params={"wait": 20}).json())


def text(deltas: list[dict]) -> str:
    return "".join(c["delta"].get("content") or "" for d in deltas for c in d["choices"])


def told(events: list[tuple[str, dict]]) -> str:
    """The text a client shows: the deltas after the last reset."""
    shown: list[dict] = []
    for name, data in events:
        if name == "reset":
            shown = []
        elif name == "delta":
            shown.append(data)
    return text(shown)


@pytest.fixture(scope="module")
def stack(redis_server, sim_server, tmp_path_factory):
    settings = ingress_settings(redis_server, sim_server.base_url, "llm-router:stream-test", stream_events_ttl_s=600)
    with running(settings, tmp_path_factory.mktemp("ingress-stream")) as url, Redis.from_url(redis_server) as redis:
        yield Stack(url, settings, redis)


def test_openai_sdk_stream_is_the_direct_jobs_text_and_usage(stack, sim):
    messages = [{"role": "user", "content": PROMPT}]
    direct = stack.result(stack.enqueue("gpt-4.1", stream=False, max_tokens=50))
    assert direct["status"] == "succeeded" and "ttft_s" not in direct

    stream = stack.client().chat.completions.create(
        model="gpt-4.1", messages=messages, max_tokens=50, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == direct["content"] == f"[gpt-4.1] You said: {PROMPT}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage  # the usage chunk, last, with no choices
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        direct["usage"]["prompt_tokens"],
        direct["usage"]["completion_tokens"],
    )
    assert usage.model_extra["cost"] == pytest.approx(direct["cost"])
    charged = sim_admin(sim, "/_sim/stats")["charged"]["gpt-4.1"]
    assert usage.model_extra["cost"] + direct["cost"] == pytest.approx(charged, abs=1e-9)

    # relayed through the queue: the worker streamed it (time to first token) and stored its result
    job_id = chunks[0].id.removeprefix("chatcmpl-")
    record = stack.result(job_id)
    assert record["status"] == "succeeded" and record["source"] == "team-a" and record["ttft_s"] > 0
    assert record["content"] == content

    # without include_usage: no usage chunk, and the SDK's stream ends at [DONE] all the same
    plain = list(stack.client().chat.completions.create(model="gpt-4.1", messages=messages, stream=True))
    assert all(c.usage is None and c.choices for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain) == f"[gpt-4.1] You said: {PROMPT}"


def test_events_late_join_gets_the_text_so_far_then_the_rest(stack, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o", "latency_per_token_ms": 100})
    job_id = stack.enqueue("gpt-4o")
    key = events_key(job_id)
    wait_until(lambda: stack.redis.xlen(key) >= 4, 20, "a few deltas in the job's stream")
    so_far = "".join(
        c["delta"].get("content") or ""
        for _, fields in stack.redis.xrange(key)
        for c in json.loads(fields[b"data"])["choices"]
    )
    events = stack.events(job_id)

    names = [name for name, _ in events]
    assert names[-1] == "result" and set(names[:-1]) == {"delta"} and len(names) >= 3
    first = events[0][1]
    assert first["model"] == "gpt-4o" and text([first]).startswith(so_far) and len(so_far) > len("[gpt-4o]")
    result = events[-1][1]
    assert result["status"] == "succeeded" and result["model"] == "gpt-4o"
    assert text([d for n, d in events if n == "delta"]) == result["content"] == f"[gpt-4o] You said: {PROMPT}"
    assert result["cost"] == pytest.approx(sim_admin(sim, "/_sim/stats")["charged"]["gpt-4o"], abs=1e-9)
    # coalesced: fewer stream entries than the simulator sent chunks (role, 15 words, finish, usage)
    assert stack.redis.xlen(key) <= 18


def test_events_of_a_finished_job_a_plain_job_and_a_resumed_client(stack, sim):
    job_id = stack.enqueue("gpt-4.1")
    record = stack.result(job_id)
    events = stack.events(job_id)
    assert [n for n, _ in events] == ["delta", "result"]  # the whole story at once, the text in one event
    assert text([events[0][1]]) == record["content"] and events[0][1]["choices"][0]["finish_reason"] == "stop"
    assert events[1][1]["cost"] == record["cost"] and events[1][1]["job_id"] == job_id
    ttl = stack.redis.ttl(events_key(job_id))
    assert 0 < ttl <= stack.settings.stream_events_ttl_s

    # a client resuming after the delta (EventSource sends Last-Event-ID) gets only the rest
    resumed = stack.events(job_id, last_event_id=events[0][1]["_id"])
    assert [n for n, _ in resumed] == ["result"]

    plain = stack.enqueue("gpt-4.1", stream=False)
    events = stack.events(plain)  # connected while queued or running: it waits for the result
    assert [n for n, _ in events] == ["delta", "result"]
    assert text([events[0][1]]) == events[1][1]["content"] == f"[gpt-4.1] You said: {PROMPT}"
    assert not stack.redis.exists(events_key(plain))  # a job that does not stream publishes nothing


def test_events_tenancy(stack, sim):
    job_id = stack.enqueue("gpt-4.1")
    stack.result(job_id)
    with stack.http("tok-b") as other:
        response = other.get(f"/v1/jobs/{job_id}/events")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert other.get(f"/v1/jobs/team-b@{job_id.split('@')[1]}/events").status_code == 404  # no such job
    assert stack.http(None).get(f"/v1/jobs/{job_id}/events").status_code == 401
    assert stack.http().get("/v1/jobs/team-a@nope/events").status_code == 404


def test_a_model_failing_mid_stream_resets_then_the_fallback_streams(stack, sim):
    # claude streams slowly and is cut after 4 chunks; gpt-4o, its fallback, answers whole
    sim_admin(sim, "/_sim/config", {"model": "claude-3-sonnet", "cut_stream_after": 4, "latency_per_token_ms": 150})
    job_id = stack.enqueue("claude-3-sonnet", fallbacks=["gpt-4o"])
    events = stack.events(job_id)  # connected before the cut

    names = [n for n, _ in events]
    assert names.count("reset") == 1 and names[-1] == "result"
    at = names.index("reset")
    before, reset, after = events[:at], events[at][1], events[at + 1 : -1]
    assert before and all(d["model"] == "claude-3-sonnet" for _, d in before)
    assert text([d for _, d in before]).startswith("[claude-3-sonnet]")
    assert reset["model"] == "claude-3-sonnet" and reset["error"]["type"] == "malformed"
    assert after and all(n == "delta" and d["model"] == "gpt-4o" for n, d in after)
    result = events[-1][1]
    assert result["status"] == "succeeded" and result["model"] == "gpt-4o"
    assert told(events) == result["content"] == f"[gpt-4o] You said: {PROMPT}"
    assert [a["model"] for a in result["attempts"]] == ["claude-3-sonnet", "gpt-4o"]

    # the stream itself says the same, whenever a client reads it
    stored = [(f[b"event"].decode(), json.loads(f[b"data"])) for _, f in stack.redis.xrange(events_key(job_id))]
    kinds = [n for n, _ in stored]
    assert kinds[-1] == "result" and kinds.count("reset") == 1
    assert {d["model"] for n, d in stored[: kinds.index("reset")]} == {"claude-3-sonnet"}
    # a client connecting now never sees the discarded text: no reset, the fallback's answer
    late = stack.events(job_id)
    assert [n for n, _ in late] == ["delta", "result"] and told(late) == result["content"]


def test_openai_sdk_stream_cut_after_text_was_sent_is_an_error_and_the_job_goes_on(stack, sim):
    sim_admin(sim, "/_sim/config", {"model": "claude-3-sonnet", "cut_stream_after": 4, "latency_per_token_ms": 150})
    stream = stack.client().chat.completions.create(
        model="claude-3-sonnet",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        extra_body={"llm_router": {"fallbacks": ["gpt-4o"]}},
    )
    got = []
    with pytest.raises(openai.APIError, match="failed mid-stream") as raised:
        for chunk in stream:
            got.append(chunk)
    assert got and "".join(c.choices[0].delta.content or "" for c in got).startswith("[claude-3-sonnet]")
    assert raised.value.code == "stream_reset"
    result = stack.result(got[0].id.removeprefix("chatcmpl-"))  # the job went on with its fallback
    assert result["status"] == "succeeded" and result["model"] == "gpt-4o"


def test_openai_sdk_stream_of_a_failing_job_is_an_error_event(stack, sim):
    with pytest.raises(openai.APIError, match="no-such-model") as raised:
        list(
            stack.client().chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    assert raised.value.type == "not_found"


async def test_one_process_relays_a_stream_to_hundreds_of_clients(stack, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o", "latency_per_token_ms": 30})
    job_id = stack.enqueue("gpt-4o")
    headers = {"Authorization": "Bearer tok-a"}
    limits = httpx.Limits(max_connections=400)

    async def one(http: httpx.AsyncClient) -> list[tuple[str, str]]:
        async with aconnect_sse(http, "GET", f"/v1/jobs/{job_id}/events") as sse:
            return [(e.event, e.data) async for e in sse.aiter_sse()]

    async with httpx.AsyncClient(base_url=stack.url, headers=headers, limits=limits, timeout=60) as http:
        got = await asyncio.gather(*(one(http) for _ in range(300)))
    results = {json.loads(events[-1][1])["content"] for events in got}
    shown = {told([(n, json.loads(d)) for n, d in events]) for events in got}
    assert results == shown == {f"[gpt-4o] You said: {PROMPT}"}
    assert all(events[-1][0] == "result" for events in got)


def test_an_error_event_mid_stream_resets_then_the_same_model_streams_again(stack, sim):
    # a 429 inside the stream: the policy retries the same model after its Retry-After
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o", "stream_rate_limit_after": 4, "latency_per_token_ms": 100})
    job_id = stack.enqueue("gpt-4o", fallbacks=[], max_wait_s=10)
    events = []
    with stack.http() as http, connect_sse(http, "GET", f"/v1/jobs/{job_id}/events") as sse:
        for event in sse.iter_sse():
            events.append((event.event, json.loads(event.data)))
            if event.event == "reset":  # the second attempt streams whole
                sim_admin(sim, "/_sim/config", {"model": "gpt-4o", "stream_rate_limit_after": None})
    names = [n for n, _ in events]
    assert names.count("reset") == 1 and names[0] == "delta" and names[-1] == "result"
    reset = events[names.index("reset")][1]
    assert reset["model"] == "gpt-4o" and reset["error"]["type"] == "rate_limit"
    result = events[-1][1]
    assert result["status"] == "succeeded" and [a["model"] for a in result["attempts"]] == ["gpt-4o", "gpt-4o"]
    assert told(events) == result["content"] == f"[gpt-4o] You said: {PROMPT}"


def test_an_idle_stream_gets_keep_alives_then_the_result(stack):
    # a job no worker will run (its record only): the client waits, kept alive, until its result
    job_id = f"team-a@idle-{uuid.uuid4().hex}"
    stack.redis.set(job_key(job_id), b"{}", ex=60)
    lines: list[str] = []
    with stack.http() as http, http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        for line in response.iter_lines():
            lines.append(line)
            if line == ": ping" and lines.count(": ping") == 1:
                result = JobResult(job_id=job_id, status="succeeded", model="gpt-4.1", content="late", cost=0.5)
                stack.redis.set(result_key(job_id), result.model_dump_json(), ex=60)
                stack.redis.publish(done_channel(job_id), "succeeded")
            if line == "event: result":
                break
    assert lines[0] == ": ping" and lines.index("event: delta") < lines.index("event: result")
    delta = json.loads(lines[lines.index("event: delta") + 1].removeprefix("data: "))
    assert delta["choices"][0]["delta"]["content"] == "late"
