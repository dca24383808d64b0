"""A streaming job's events (worker.outputs.events) against a real Redis: coalescing, the timer flush,
resets, the result entry, TTL and MAXLEN; and the ingress's compaction of what it reads
(producers.streams)."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from harness.redis_server import free_port
from harness.wait import wait_until_async
from producers.streams import compact
from worker.contract.keys import events_key, events_posted_channel
from worker.contract.models import ErrorInfo, JobResult
from worker.contract.settings import Settings
from worker.outputs.events import Deltas, JobEvents, decode, streams

WORDS = [f" w{i}" for i in range(200)]


def settings(**changes: object) -> Settings:
    return Settings(_env_file=None, **changes)


def piece(content: str, index: int = 0, **extra: object) -> list[dict]:
    return [{"index": index, "delta": {"content": content}, "finish_reason": None, **extra}]


async def entries(redis: Redis, job_id: str) -> list[tuple[str, dict]]:
    return [decode(fields) for _, fields in await redis.xrange(events_key(job_id))]


def joined(events: list[tuple[str, dict]]) -> str:
    return "".join(c["delta"].get("content") or "" for n, d in events if n == "delta" for c in d["choices"])


def test_deltas_merge_as_openai_streams_them():
    deltas = Deltas()
    deltas.add([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    deltas.add(
        [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}]},
            }
        ]
    )
    deltas.add([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}}])
    deltas.add([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}])
    deltas.add([{"index": 1, "delta": {"content": "Hel"}, "logprobs": {"content": [{"token": "Hel"}]}}])
    deltas.add([{"index": 1, "delta": {"content": "lo"}, "logprobs": {"content": [{"token": "lo"}]}}])
    deltas.add(
        [{"index": 1, "delta": {}, "finish_reason": "stop"}, {"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
    )
    data = deltas.take("gpt-4.1")
    assert not deltas and data["model"] == "gpt-4.1"
    first, second = data["choices"]
    assert first["delta"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        ],
    }
    assert first["finish_reason"] == "tool_calls"
    assert second == {
        "index": 1,
        "delta": {"content": "Hello"},
        "finish_reason": "stop",
        "logprobs": {"content": [{"token": "Hel"}, {"token": "lo"}]},
    }


def entry(name: str, data: dict, n: int) -> tuple[bytes, dict[bytes, bytes]]:
    return f"1-{n}".encode(), {b"event": name.encode(), b"data": orjson.dumps(data)}


def test_compact_merges_a_read_and_drops_what_a_reset_voids():
    a, b, c = ({"model": m, "choices": piece(t)} for m, t in (("x", "A"), ("x", "B"), ("y", "C")))
    reset = {"model": "x", "error": {"type": "malformed", "message": "cut"}}
    read = [entry("delta", a, 1), entry("delta", b, 2), entry("reset", reset, 3), entry("delta", c, 4)]

    sent, holding = compact(read, holding=False)  # a client with no text: never sees x's
    assert [(e.name, e.id) for e in sent] == [("delta", "1-4")] and holding
    assert sent[0].data["model"] == "y" and sent[0].data["choices"][0]["delta"]["content"] == "C"

    sent, holding = compact(read, holding=True)  # a client holding text is told to drop it
    assert [e.name for e in sent] == ["reset", "delta"] and holding

    sent, _ = compact([*read[:2], entry("result", {"status": "succeeded"}, 5), entry("delta", c, 6)], False)
    assert [(e.name, e.id) for e in sent] == [("delta", "1-2"), ("result", "1-5")]
    assert sent[0].data["choices"][0]["delta"]["content"] == "AB"


def test_which_jobs_stream():
    on, off = settings(), settings(stream_events_ttl_s=0)
    assert streams("chat", {"stream": True}, on) and streams("vision", {"stream": True}, on)
    assert not streams("chat", {"stream": False}, on) and not streams("chat", "junk", on)
    assert not streams("compare", {"stream": True}, on)  # several models at once: no one text
    assert not streams("chat", {"stream": True}, off)


async def test_deltas_are_coalesced_and_published_in_order(redis):
    events = JobEvents(redis, "j1", settings(stream_events_flush_ms=1000))
    hook = events.on_delta("gpt-4.1")
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(events_posted_channel("j1"))
        for word in WORDS:
            await hook(piece(word))
        await events.attempt_ended("gpt-4.1", None)
        await events.close(JobResult(job_id="j1", status="succeeded", content="".join(WORDS), cost=0.25))
        woken = [m async for m in _messages(pubsub, 2)]
    stored = await entries(redis, "j1")
    # the first delta at once, the other 199 (995 characters, under FLUSH_CHARS) in one entry
    # when the attempt ends, within the interval
    assert [n for n, _ in stored] == ["delta", "delta", "result"]
    assert joined(stored) == "".join(WORDS) and stored[-1][1]["cost"] == 0.25
    assert 0 < await redis.ttl(events_key("j1")) <= 3600
    assert woken  # readers are woken on the channel


async def _messages(pubsub, n):
    for _ in range(n):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        if message is not None:
            yield message


async def test_a_buffered_delta_goes_out_after_the_interval_with_no_further_chunk(redis):
    events = JobEvents(redis, "j2", settings(stream_events_flush_ms=50))
    hook = events.on_delta("gpt-4.1")
    await hook(piece("Hello"))
    await hook(piece(" world"))  # buffered: within 50 ms of the first
    assert len(await entries(redis, "j2")) == 1

    async def flushed() -> bool:
        return bool(await redis.xlen(events_key("j2")) == 2)

    await wait_until_async(flushed, 2, "the timer's flush")
    assert joined(await entries(redis, "j2")) == "Hello world"


async def test_flush_interval_zero_publishes_every_chunk_and_a_big_buffer_goes_at_once(redis):
    every = JobEvents(redis, "j3", settings(stream_events_flush_ms=0))
    hook = every.on_delta("m")
    for word in WORDS[:20]:
        await hook(piece(word))
    assert await redis.xlen(events_key("j3")) == 20

    big = JobEvents(redis, "j4", settings(stream_events_flush_ms=60_000))
    hook = big.on_delta("m")
    await hook(piece("first"))
    await hook(piece("x" * 1500))  # over FLUSH_CHARS: no waiting for the interval
    assert await redis.xlen(events_key("j4")) == 2
    big.abandon()


async def test_a_failed_attempt_resets_only_after_published_deltas_and_a_rerun_resets_first(redis):
    error = ErrorInfo(type="malformed", message="stream cut")
    events = JobEvents(redis, "j5", settings())
    await events.attempt_ended("a", error)  # failed before any delta: nothing to discard
    hook = events.on_delta("a")
    await hook(piece("partial"))
    await hook(piece(" more"))  # buffered, never published: dropped
    await events.attempt_ended("a", error)
    await events.on_delta("b")(piece("whole"))
    await events.attempt_ended("b", None)
    stored = await entries(redis, "j5")
    assert [(n, d["model"]) for n, d in stored] == [("delta", "a"), ("reset", "a"), ("delta", "b")]
    assert stored[1][1]["error"] == {"type": "malformed", "message": "stream cut"}

    rerun = JobEvents(redis, "j5", settings(), run=2)  # a worker died mid-stream; the job runs again
    await rerun.on_delta("b")(piece("again"))
    stored = await entries(redis, "j5")
    assert [n for n, _ in stored[3:]] == ["reset", "delta"] and stored[3][1]["error"]["type"] == "rerun"


async def test_the_stream_is_bounded_by_maxlen(redis):
    events = JobEvents(redis, "j6", settings(stream_events_flush_ms=0, stream_events_maxlen=100))
    hook = events.on_delta("m")
    for i in range(1000):
        await hook(piece(f" {i}"))
    assert await redis.xlen(events_key("j6")) < 300  # approximate trimming: whole nodes of 100


async def test_publishing_is_best_effort_when_redis_is_away():
    gone = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    events = JobEvents(gone, "j7", settings(stream_events_flush_ms=0))
    await events.on_delta("m")(piece("x"))  # logged, not raised: the job goes on
    await events.close(JobResult(job_id="j7", status="succeeded"))
    assert events.writes == 0
    await gone.aclose()


async def test_a_write_sent_again_after_a_lost_answer_is_published_once(redis, redis_url):
    # The worker's client sends a command again when a connection error cut its answer
    # (worker.contract.connections): a delta written twice would show its text twice to every reader.
    from harness.reply_cutter import ReplyCutter
    from worker.contract.connections import arq_settings

    cutter = ReplyCutter(redis_url)
    url = await cutter.start()
    rs = arq_settings(url)
    client = Redis.from_url(url, retry=rs.retry, retry_on_error=rs.retry_on_error)
    try:
        events = JobEvents(client, "j9", settings(stream_events_flush_ms=0))
        hook = events.on_delta("gpt-4.1")
        await hook(piece("Hello"))
        cutter.marker = events._script.sha.encode()
        await hook(piece(" world"))
        await events.close(JobResult(job_id="j9", status="succeeded", content="Hello world"))
        assert cutter.cuts == 1
        stored = await entries(redis, "j9")
        assert [n for n, _ in stored] == ["delta", "delta", "result"] and joined(stored) == "Hello world"
    finally:
        await client.aclose()
        cutter.server.close()
