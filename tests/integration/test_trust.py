"""The queue as a trust boundary: records written by other writers, in any shape, end as a
failed result, a dead letter or a quarantine entry; the worker stays up; requests stay
bounded; logs cannot be forged; an id names one job."""

from __future__ import annotations

import json
import logging

import pytest

from producers import Producer
from producers.api import JobConflict, JobRejected
from tests.helpers import run_worker, sim_admin
from worker.contract.keys import DLQ, QUARANTINE, job_key, retry_key
from worker.process import logs

HELLO = [{"role": "user", "content": "hi"}]


async def put(redis, queue: str, job_id: bytes | str, record: bytes | str | dict | None) -> None:
    """Write a record the way another language would: straight into Redis."""
    raw_id = job_id.encode() if isinstance(job_id, str) else job_id
    if record is not None:
        await redis.set(b"arq:job:" + raw_id, json.dumps(record) if isinstance(record, dict) else record)
    await redis.zadd(queue, {raw_id: 1})


CHAT = {"kind": "chat", "model": "gpt-4.1", "messages": HELLO}


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ({"f": "chat", "a": [CHAT], "t": "x"}, "`t` must be"),  # killed the worker (TypeError in arq)
        ({"f": "chat", "a": []}, "exactly one job object"),  # vanished
        ({"f": "chat", "a": [CHAT, CHAT]}, "exactly one job object"),
        ({"f": "chat", "a": [CHAT], "k": "x"}, "`k` must be empty"),
        ({"f": "chat", "a": [CHAT], "k": {"x": 1}}, "`k` must be empty"),
        ({"f": "chat", "a": [CHAT], "t": 10**12}, "`t` must be"),
        ({"f": "chat", "a": [CHAT], "et": "soon"}, "`et` must be"),
        ({"f": 7, "a": [CHAT]}, "unknown job kind 7"),
        ({"f": "invalid", "a": ["forged"]}, "unknown job kind 'invalid'"),
        ({"f": "chat", "a": ["not an object"]}, "exactly one job object"),
        (b"\xff\xfe not utf-8", "the job is not JSON"),
        ("[1, 2]", "not an arq job record"),
    ],
)
async def test_a_malformed_record_ends_as_a_failed_result(producer, settings, redis, record, says):
    await put(redis, settings.queue_name, "foreign", record)
    fine = await producer.chat("gpt-4.1", "still here")
    worker = await run_worker(settings)
    result = await producer.result("foreign")
    assert result.status == "failed" and result.error.type == "invalid_job" and says in result.error.message
    assert await producer.dead_letters.ids() == ["foreign"]
    assert (await producer.result(fine)).status == "succeeded"
    assert await producer.queued() == 0 and worker.jobs_failed == 0


@pytest.mark.parametrize(
    ("payload", "field", "says"),
    [
        ({"max_tokens": True}, "max_tokens", "valid integer"),
        ({"max_tokens": "5"}, "max_tokens", "valid integer"),
        ({"temperature": "0.7"}, "temperature", "valid number"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"model": "gpt-4.1\nINFO forged log line"}, "model", "must be 1-128 characters"),
        ({"model": "x" * 100_000}, "model", "must be 1-128 characters"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages.0", "must not be empty"),
        ({"max_tokens": 10**12}, "max_tokens", "less than or equal to 2000000"),
        ({"max_tokens": 500_000}, "max_tokens", "MAX_OUTPUT_TOKENS"),
        ({"model": "gpt-3.5-turbo", "max_tokens": 20_000}, "max_tokens", "context window of 16385"),
        ({"messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}, "job", "MAX_JOB_BYTES"),
    ],
)
async def test_a_foreign_payload_out_of_bounds_is_refused_in_the_producers_words(
    producer, settings, redis, sim, payload, field, says
):
    await put(redis, settings.queue_name, "foreign", {"f": "chat", "a": [CHAT | payload]})
    await run_worker(settings)
    result = await producer.result("foreign")
    assert result.status == "failed" and result.error.type == "invalid_job"
    assert result.error.field == field and says in result.error.message
    assert sim_admin(sim, "/_sim/stats")["calls"] == {}  # nothing reached the gateway
    fields = {k: v for k, v in (CHAT | payload).items() if k != "kind"}
    with pytest.raises(JobRejected) as refused:  # the producer says the same
        await producer.chat(fields.pop("model"), messages=fields.pop("messages"), **fields)
    assert refused.value.field == field and says in refused.value.message


@pytest.mark.parametrize(
    ("raw_id", "reason"), [(b"\xff\xfebad", "not_utf8"), (b"has space", "bad_id"), (b"new\nline", "bad_id")]
)
async def test_a_queue_member_with_no_usable_id_is_quarantined(producer, settings, redis, raw_id, reason):
    await put(redis, settings.queue_name, raw_id, {"f": "chat", "a": [CHAT]})
    fine = await producer.chat("gpt-4.1", "still here")
    await run_worker(settings)
    assert (await producer.result(fine)).status == "succeeded"
    [entry] = [json.loads(e) for e in await redis.lrange(QUARANTINE, 0, -1)]
    assert entry["reason"] == reason and entry["queue"] == settings.queue_name and '"gpt-4.1"' in entry["record"]
    assert await producer.queued() == 0 and not await redis.exists(b"arq:job:" + raw_id)


async def test_a_queued_id_without_a_record_fails_instead_of_vanishing(producer, settings, redis):
    await put(redis, settings.queue_name, "orphan", None)
    await run_worker(settings)
    result = await producer.result("orphan")
    assert result.status == "failed" and "has no record" in result.error.message
    assert await producer.dead_letters.ids() == ["orphan"]


async def test_a_record_arq_itself_trips_on_fails_and_the_worker_stays_up(producer, settings, redis):
    job_id = await producer.chat("gpt-4.1", "counted wrong")
    await redis.set(retry_key(job_id), "not a number")  # arq's INCR of its run counter fails
    fine = await producer.chat("gpt-4.1", "still here")
    await run_worker(settings)
    result = await producer.result(job_id)
    assert result.status == "failed" and "arq could not run the record" in result.error.message
    assert (await producer.result(fine)).status == "succeeded"
    assert await producer.queued() == 0 and not await redis.exists(job_key(job_id))


async def test_the_same_id_with_another_job_is_a_conflict(producer):
    assert await producer.chat("gpt-4.1", "first", job_id="order-7") == "order-7"
    assert await producer.chat("gpt-4.1", "first", job_id="order-7") == "order-7"  # the same job: a no-op
    with pytest.raises(JobConflict) as conflict:
        await producer.chat("gpt-4.1", "second", job_id="order-7")
    assert conflict.value.field == "job_id" and "order-7 already names a different job" in conflict.value.message
    assert await producer.queued() == 1


async def test_a_record_queued_again_after_its_job_finished_is_not_run_again(producer, settings, redis, sim):
    record = {"f": "chat", "a": [CHAT]}
    await put(redis, settings.queue_name, "from-go", record)
    await run_worker(settings)
    first = await producer.result("from-go")
    await put(redis, settings.queue_name, "from-go", record)  # the Go service retried its write
    await run_worker(settings)
    assert await producer.result("from-go") == first and await producer.queued() == 0
    assert sim_admin(sim, "/_sim/stats")["calls"] == {"gpt-4.1": 1}  # billed once


async def test_the_dead_letter_list_is_bounded(producer, settings, redis, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": True})
    small = settings.model_copy(update={"dlq_max": 3, "dlq_max_payload_bytes": 300, "attempts_per_model": 1})
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("llm_router_dead_letters_dropped_total") or 0
    ids = [await producer.chat("gpt-4.1", f"doomed {i}", fallbacks=[]) for i in range(4)]
    await run_worker(small.model_copy(update={"worker_concurrency": 1}))
    # the big one dies last whatever the order of jobs enqueued in one millisecond (test_queue_order)
    big = await producer.chat("gpt-4.1", "y" * 5000, fallbacks=[])
    await run_worker(small.model_copy(update={"worker_concurrency": 1}))
    kept = await producer.dead_letters.ids()
    assert len(kept) == 3 and big in kept and await redis.hlen(DLQ) == 3  # the oldest were dropped
    assert REGISTRY.get_sample_value("llm_router_dead_letters_dropped_total") == before + 2
    letter = await producer.dead_letters.get(big)
    assert letter.truncated_from > 5000 and len(letter.job) == 300  # kept truncated, its size noted
    with pytest.raises(ValueError, match="kept truncated"):
        await producer.dead_letters.replay(big)
    assert all([(await producer.result(i)).status == "failed" for i in ids])  # results stay


def test_logged_values_cannot_forge_lines(caplog):
    record = logging.LogRecord(
        "t", logging.WARNING, __file__, 1, "job %s rejected: %s", ("id", "x\nINFO forged\x1b[2J"), None
    )
    assert logs.EscapeUnsafe().filter(record)
    assert record.getMessage() == "job id rejected: x\\x0aINFO forged\\x1b[2J"


async def test_lone_surrogates_are_refused_by_the_producer_and_the_worker(producer, settings, redis):
    with pytest.raises(JobRejected) as refused:
        await producer.chat("gpt-4.1", "half a pair: \ud800")
    assert refused.value.field == "job" and "cannot be written as JSON" in refused.value.message
    await put(
        redis,
        settings.queue_name,
        "surrogate",
        '{"f": "chat", "a": [{"model": "gpt-4.1", "messages": [{"role": "user", "content": "\\ud800"}]}]}',
    )
    await put(redis, settings.queue_name, "with-s", {"f": "chat", "a": [CHAT], "s": True, "k": {"zzz": 1}})
    await run_worker(settings)
    for job_id in ("surrogate", "with-s"):
        result = await producer.result(job_id)
        assert result.status == "failed" and result.error.type == "invalid_job", job_id


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "image_url", "image_url": "data:image/png;base64," + "A" * 4000}],  # over MAX_IMAGE_BYTES here
        [{"type": "text", "text": "data:image/png;base64," + "A" * 9000}],  # text, whatever it starts with
        [{"type": "image_url", "image_url": "data:image/png;base64,AAAA"}] * 17,  # too many images
    ],
    ids=["big image", "text posing as an image", "17 images"],
)
async def test_images_are_bounded_in_every_job(producer, settings, content):
    small = settings.model_copy(update={"max_image_bytes": 1000, "max_job_bytes": 8192})
    async with Producer(settings=small) as p:
        with pytest.raises(JobRejected) as refused:
            await p.chat("gpt-4o", messages=[{"role": "user", "content": content}])
    assert refused.value.field in ("job", "image")


async def test_an_answer_the_client_cannot_read_fails_the_call_not_the_worker(producer, settings):
    """A gateway answering nonsense in usage or in a stream chunk: `malformed`, retried, then the
    job fails with a result and a dead letter (never a job that vanishes)."""
    from aiohttp import web

    from harness.redis_server import free_port

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(
                {
                    "choices": [{"message": {"role": "assistant", "content": "hi"}}],
                    "usage": {"prompt_tokens": "abc", "completion_tokens": [1]},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [1]}\n\ndata: [DONE]\n\n')
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        odd = settings.model_copy(update={"aisa_base_url": f"http://127.0.0.1:{port}/v1", "circuit_failures": 100})
        ids = [
            await producer.chat("odd-model", "x", fallbacks=[]),
            await producer.chat("odd-model", "y", stream=True, fallbacks=[]),
        ]
        worker = await run_worker(odd)
    finally:
        await runner.cleanup()
    for job_id in ids:
        result = await producer.result(job_id)
        assert result.status == "failed" and result.error.type == "malformed", result.error
    assert sorted(await producer.dead_letters.ids()) == sorted(ids) and worker.jobs_failed == 0
