"""The whole pipeline in-process: producer -> real Redis -> arq Worker (burst) -> simulator -> result."""

import json

import pytest
from aiohttp import web
from arq.constants import job_key_prefix

from producers.api import JobRejected
from tests.helpers import API_KEY, free_port, run_worker, sim_admin
from worker.contract.keys import CREDITS, result_key
from worker.contract.models import ChatJob
from worker.contract.settings import Price

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64


async def test_chat_job_end_to_end_with_cost(producer, settings, sim):
    job_id = await producer.chat("gpt-4.1", "Hello", system="Be brief", temperature=0.2, max_tokens=50)
    assert await producer.result(job_id) is None  # queued, not run
    await run_worker(settings)
    result = await producer.result(job_id)
    assert result.status == "succeeded" and result.kind == "chat" and result.source == "tests"
    assert result.content == "[gpt-4.1] You said: Hello" and result.model == "gpt-4.1"
    assert result.cost == pytest.approx(sim_admin(sim, "/_sim/stats")["charged"]["gpt-4.1"])
    assert result.cost_source == "gateway" and result.credits_remaining == pytest.approx(100 - result.cost)
    assert result.usage.total_tokens > 0 and result.latency_s > 0
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert [a.model for a in result.attempts] == ["gpt-4.1"] and result.attempts[0].ok
    assert 0 < await producer.redis.ttl(result_key(job_id)) <= settings.result_ttl_s


async def test_streaming_job_records_ttft_and_full_text(producer, settings):
    job_id = await producer.chat("claude-3-sonnet", "Write a poem about AI", stream=True)
    await run_worker(settings)
    result = await producer.result(job_id)
    assert result.content == "[claude-3-sonnet] You said: Write a poem about AI"
    assert result.ttft_s is not None and result.ttft_s <= result.latency_s
    assert result.cost > 0 and result.usage.completion_tokens > 0


async def test_vision_job_from_a_local_file(producer, settings, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(PNG)
    job_id = await producer.vision("gpt-4o", str(image), "What is in this image?")
    await run_worker(settings)
    result = await producer.result(job_id)
    assert result.status == "succeeded" and result.kind == "vision"
    assert result.content == f"[gpt-4o] I see a image/png image of {len(PNG)} bytes. You asked: What is in this image?"


async def test_compare_one_model_failing_does_not_fail_the_others(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"latency_ms": 200})  # slow enough that a serial walk would show
    sim_admin(sim, "/_sim/config", {"model": "gemini-2.0-flash", "fail_next": [503]})
    job_id = await producer.compare(["gpt-4.1", "claude-3-sonnet", "gemini-2.0-flash", "no-such-model"], "2+2?")
    await run_worker(settings)
    result = await producer.result(job_id)
    by_model = {a.model: a for a in result.answers}
    assert result.status == "succeeded"
    assert by_model["gpt-4.1"].content == "[gpt-4.1] You said: 2+2?"
    assert by_model["claude-3-sonnet"].status == "succeeded"
    assert by_model["gemini-2.0-flash"].status == "succeeded"  # its 503 was retried, on gemini itself
    assert [(a.model, a.ok) for a in result.attempts if a.model == "gemini-2.0-flash"] == [
        ("gemini-2.0-flash", False),
        ("gemini-2.0-flash", True),
    ]
    assert by_model["no-such-model"].error.type == "not_found"
    stats = sim_admin(sim, "/_sim/stats")
    assert result.cost == pytest.approx(stats["charged_total"])
    assert await producer.store.spend() == pytest.approx(stats["charged"])
    assert stats["peak_concurrency"] >= 3  # fanned out at once (the simulator's count, not a duration)


async def test_upstream_failure_is_a_failed_result_not_a_crash(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": True})
    failed = await producer.chat("gpt-4.1", "hi")
    fine = await producer.chat("gpt-4o", "hi")
    await run_worker(settings)
    result = await producer.result(failed)
    assert result.status == "failed" and result.error.type == "server" and result.error.status == 503
    assert result.cost is None and result.model is None
    assert [a.ok for a in result.attempts] == [False] * settings.attempts_per_model
    assert (await producer.result(fine)).status == "succeeded"


async def test_invalid_payload_from_another_producer_fails_naming_the_field(producer, settings, redis):
    # A producer in another language wrote a job by hand, in arq's JSON format, with a bad field.
    job = {
        "t": 1,
        "f": "chat",
        "a": [{"model": "gpt-4.1", "messages": [{"role": "user", "content": "x"}], "temperature": 7}],
        "k": {},
        "et": 1,
    }
    await redis.set(job_key_prefix + "handmade", json.dumps(job))
    await redis.zadd(settings.queue_name, {"handmade": 1})
    after = await producer.chat("gpt-4.1", "still alive?")
    worker = await run_worker(settings)
    result = await producer.result("handmade")
    assert result.status == "failed" and result.error.type == "invalid_job"
    assert result.error.field == "temperature" and "less than or equal to 2" in result.error.message
    assert (await producer.result(after)).status == "succeeded"
    assert worker.jobs_complete == 2 and worker.jobs_failed == 0


async def test_jobs_are_json_in_redis_never_pickle(producer, settings, redis):
    job_id = await producer.chat("gpt-4.1", "json please", max_tokens=10)
    raw = json.loads(await redis.get(job_key_prefix + job_id))
    assert raw["f"] == "chat"
    assert ChatJob.model_validate(raw["a"][0]).messages[0].content == "json please"
    await run_worker(settings)
    assert json.loads(await redis.get(result_key(job_id)))["status"] == "succeeded"


async def test_caller_supplied_id_makes_enqueue_idempotent(producer, settings, sim):
    first = await producer.chat("gpt-4.1", "once", job_id="order-42")
    second = await producer.chat("gpt-4.1", "once", job_id="order-42")
    assert first == second == "order-42" and await producer.queued() == 1
    await run_worker(settings)
    assert await producer.chat("gpt-4.1", "once", job_id="order-42") == "order-42"  # done: still a no-op
    assert await producer.queued() == 0
    assert sim_admin(sim, "/_sim/stats")["calls"]["gpt-4.1"] == 1


async def test_rejected_job_enqueues_nothing(producer):
    await producer.chat("gpt-4.1", "accepted")
    with pytest.raises(JobRejected) as info:
        await producer.chat("gpt-4.1", "hi", temperature=3)
    assert info.value.field == "temperature"
    with pytest.raises(JobRejected) as info:
        await producer.vision("gpt-4o", "/no/such/file.png", "what?")
    assert info.value.field == "image" and "cannot read" in info.value.message
    assert await producer.queued() == 1  # the accepted job is still there, nothing else


async def test_enqueue_many_in_one_round_trip(producer, settings):
    jobs = [ChatJob(model="gpt-4o-mini", messages=[{"role": "user", "content": f"prompt {i}"}]) for i in range(25)]
    ids = await producer.enqueue_many(jobs)
    assert len(set(ids)) == 25 and await producer.queued() == 25
    await run_worker(settings)
    contents = [(await producer.result(i)).content for i in ids]
    assert contents == [f"[gpt-4o-mini] You said: prompt {i}" for i in range(25)]


async def test_enqueue_many_stamps_the_producers_source(producer, settings):
    mine = ChatJob(model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}])
    theirs = ChatJob(model="gpt-4o-mini", messages=[{"role": "user", "content": "b"}], source="billing")
    ids = await producer.enqueue_many([mine, theirs])
    await run_worker(settings)
    assert [(await producer.result(i)).source for i in ids] == ["tests", "billing"]


async def test_a_job_id_that_is_not_a_string_is_refused(producer):
    with pytest.raises(JobRejected) as info:
        await producer.chat("gpt-4.1", "hi", job_id=42)
    assert info.value.field == "job_id" and "1-128 characters of letters" in info.value.message
    assert await producer.queued() == 0


async def test_wait_returns_when_the_worker_stores_the_result(producer, settings):
    import asyncio

    job_id = await producer.chat("gpt-4.1", "wait for me")
    waiter = asyncio.create_task(producer.wait(job_id, timeout=10))
    await run_worker(settings)
    assert (await asyncio.wait_for(waiter, 10)).content == "[gpt-4.1] You said: wait for me"


async def test_api_key_never_reaches_redis(producer, settings, redis):
    await producer.chat("gpt-4.1", "secret?")
    await producer.chat("nope", "fail")
    await run_worker(settings)
    blobs = []
    async for key in redis.scan_iter():
        kind = await redis.type(key)
        if kind == b"string":
            blobs.append(await redis.get(key))
        elif kind == b"hash":
            blobs.append(json.dumps({k.decode(): v.decode() for k, v in (await redis.hgetall(key)).items()}).encode())
        blobs.append(key)
    assert blobs and not any(API_KEY.encode() in b for b in blobs)
    assert float(await redis.hget(CREDITS, "remaining")) < 100


async def test_plain_openai_server_priced_from_the_table_or_unknown(producer, settings):
    from tests.plain_openai import create_app

    runner = web.AppRunner(create_app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        plain = settings.model_copy(
            update={"aisa_base_url": f"http://127.0.0.1:{port}/v1", "prices": {"priced": Price(input=1.0, output=2.0)}}
        )
        priced = await producer.chat("priced", "a")
        unpriced = await producer.chat("unpriced", "b", stream=True)
        await run_worker(plain)
    finally:
        await runner.cleanup()
    a, b = await producer.result(priced), await producer.result(unpriced)
    assert a.status == b.status == "succeeded"
    assert a.cost_source == "price_table" and a.cost == pytest.approx((10 * 1.0 + 5 * 2.0) / 1000)
    assert b.cost_source == "unknown" and b.cost is None and b.content.strip() == "plain answer to b"
    assert await producer.store.spend() == pytest.approx({"priced": 0.02})


@pytest.mark.parametrize(
    "raw, says",
    [
        (b"\x80\x04pickled?", "the job is not JSON"),
        (b'{"hello": "world"}', "not an arq job record"),
        (
            b'{"t": 1, "f": "chatt", "a": [{}], "k": {}, "et": 1}',
            "unknown job kind 'chatt': use one of chat, vision, compare",
        ),
    ],
)
async def test_unreadable_job_records_fail_with_a_result_not_silence(producer, settings, redis, raw, says):
    await redis.set(job_key_prefix + "foreign", raw)
    await redis.zadd(settings.queue_name, {"foreign": 1})
    fine = await producer.chat("gpt-4.1", "still here")
    await run_worker(settings)
    result = await producer.result("foreign")
    assert result.status == "failed" and result.error.type == "invalid_job" and says in result.error.message
    assert await producer.dead_letters.ids() == ["foreign"]
    assert (await producer.result(fine)).status == "succeeded"


async def test_a_minimal_foreign_job_without_t_or_k_runs(producer, settings, redis):
    job = {"f": "chat", "a": [{"model": "gpt-4.1", "messages": [{"role": "user", "content": "from Go"}]}]}
    await redis.set(job_key_prefix + "go", json.dumps(job))
    await redis.zadd(settings.queue_name, {"go": 1})
    await run_worker(settings)
    assert (await producer.result("go")).content == "[gpt-4.1] You said: from Go"


async def test_a_job_that_never_finishes_is_dead_lettered_not_run_forever(producer, settings, redis, sim):
    from arq.constants import retry_key_prefix

    job_id = await producer.chat("gpt-4.1", "poison")
    # as if workers had died running it MAX_JOB_RUNS times: arq counts runs in its retry key
    await redis.set(retry_key_prefix + job_id, settings.max_job_runs)
    await run_worker(settings)
    result = await producer.result(job_id)
    assert (
        result.status == "failed" and result.error.type == "abandoned" and "without finishing" in result.error.message
    )
    assert await producer.dead_letters.ids() == [job_id]
    assert sim_admin(sim, "/_sim/stats")["calls"] == {}  # not called again


async def test_two_workers_claiming_the_same_queue_run_each_job_once(producer, settings, sim):
    import asyncio

    ids = await producer.enqueue_many(
        [ChatJob(model="gpt-4o-mini", messages=[{"role": "user", "content": f"p{i}"}]) for i in range(120)]
    )
    s = settings.model_copy(update={"worker_concurrency": 7})  # fewer slots than ids: claims in batches
    await asyncio.gather(run_worker(s), run_worker(s))
    assert all([(await producer.result(i)).status == "succeeded" for i in ids])
    assert sim_admin(sim, "/_sim/stats")["calls"]["gpt-4o-mini"] == 120  # none ran twice


async def test_the_claim_skips_jobs_not_due_or_in_progress(settings, redis):
    from arq.utils import timestamp_ms

    from worker.contract.keys import in_progress_key, job_key, result_key, retry_key
    from worker.process.lease import Lease

    now = timestamp_ms()
    await redis.zadd("q", {i: now - 5 for i in ("due", "busy", "done", "orphan")} | {"later": now + 60_000})
    for i in ("due", "later", "busy", "done"):
        await redis.set(job_key(i), "{}")
    await redis.set(in_progress_key("busy"), 1)
    await redis.set(result_key("done"), "{}")  # finished, then queued again by another writer
    await redis.zadd("q", {"also-due": now - 4})
    await redis.set(job_key("also-due"), "{}")
    ids = ["due", "later", "busy", "gone", "done", "orphan", "also-due"]
    claimed = await Lease(redis, "q", lease_s=3).claim(ids, 1, now)  # one free slot
    assert [(c.raw_id, c.score, c.what) for c in claimed] == [
        (b"due", now + 3000, "run"),
        (b"done", now - 5, "done"),
        (b"orphan", now - 5, "missing"),
    ]
    # the job to run comes with its record and its run count (arq's retry key, incremented)
    assert (claimed[0].record, claimed[0].tries) == (b"{}", 1) and await redis.get(retry_key("due")) == b"1"
    assert 0 < await redis.pttl(in_progress_key("due")) <= 3000  # the lease, not arq's long mark
    assert not await redis.exists(in_progress_key("later"), in_progress_key("gone"), in_progress_key("done"))
    # the claimed job is scored at its lease's end; the copy and the orphan left the queue; the
    # job past the free slot waits, untouched
    assert await redis.zrange("q", 0, -1, withscores=True) == [
        (b"busy", now - 5),
        (b"also-due", now - 4),
        (b"due", now + 3000),
        (b"later", now + 60_000),
    ]
    assert not await redis.exists(job_key("done")) and not await redis.exists(in_progress_key("also-due"))


async def test_gemini_native_job_priced_from_the_table(producer, settings, sim):
    priced = settings.model_copy(update={"prices": {"gemini-2.0-flash": Price(input=0.1, output=0.4)}})
    job_id = await producer.chat("gemini-2.0-flash", "Explain machine learning.", system="Be brief", gemini_native=True)
    await run_worker(priced)
    result = await producer.result(job_id)
    assert result.status == "succeeded" and result.model == "gemini-2.0-flash"
    assert result.content == "[gemini-2.0-flash] You said: Explain machine learning." and result.finish_reason == "stop"
    usage = result.usage
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # the native answer carries no usage.cost: PRICES prices it (chat/completions would say "gateway")
    assert result.cost_source == "price_table" and result.credits_remaining is None
    assert result.cost == pytest.approx((usage.prompt_tokens * 0.1 + usage.completion_tokens * 0.4) / 1000)
    assert [(a.model, a.ok, a.cost) for a in result.attempts] == [("gemini-2.0-flash", True, result.cost)]
    assert await producer.store.spend() == pytest.approx({"gemini-2.0-flash": result.cost})
    assert not await producer.redis.exists(CREDITS)  # no balance reported: the last one stays
    assert sim_admin(sim, "/_sim/stats")["calls"] == {"gemini-2.0-flash": 1}


async def test_gemini_native_chain_falls_back_to_chat_completions(producer, settings, sim):
    sim_admin(sim, "/_sim/config", {"model": "gemini-1.5-pro", "down": True})
    job_id = await producer.chat("gemini-1.5-pro", "hi", fallbacks=["gpt-4o"], gemini_native=True)
    await run_worker(settings)
    result = await producer.result(job_id)
    assert result.status == "succeeded" and result.model == "gpt-4o" and result.content == "[gpt-4o] You said: hi"
    assert result.cost_source == "gateway" and result.credits_remaining is not None  # gpt-4o: chat/completions
    failed = [a for a in result.attempts if not a.ok]
    assert [a.model for a in failed] == ["gemini-1.5-pro"] * settings.attempts_per_model
    assert {(a.error.type, a.error.status, a.error.code) for a in failed} == {("server", 503, "UNAVAILABLE")}  # native
    assert [a.model for a in result.attempts if a.ok] == ["gpt-4o"]


async def test_gemini_native_vision_inline_and_streams_on_chat_completions(producer, settings, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(PNG)
    vision = await producer.vision("gemini-1.5-flash", str(image), "What is it?", gemini_native=True)
    streamed = await producer.chat("gemini-2.0-flash", "Hello", stream=True, gemini_native=True)
    await run_worker(settings)
    v, s = await producer.result(vision), await producer.result(streamed)
    assert v.content == f"[gemini-1.5-flash] I see a image/png image of {len(PNG)} bytes. You asked: What is it?"
    assert v.cost_source == "unknown" and v.cost is None  # native, and gemini-1.5-flash is not in PRICES
    assert s.content == "[gemini-2.0-flash] You said: Hello" and s.ttft_s is not None and s.cost_source == "gateway"


async def test_a_claim_sent_again_after_a_lost_answer_still_hands_over_its_jobs(settings, redis, redis_url):
    # The worker's client sends a command again when a connection error cut its answer
    # (worker.contract.connections): the first run of the claim holds the job, the second must hand it
    # over (not leave it held by nobody for a lease), counting one run, not two.
    from arq.utils import timestamp_ms
    from redis.asyncio import Redis as AsyncRedis

    from harness.reply_cutter import ReplyCutter
    from worker.contract.connections import arq_settings
    from worker.contract.keys import job_key, retry_key
    from worker.process.lease import Lease

    cutter = ReplyCutter(redis_url)
    url = await cutter.start()
    rs = arq_settings(url)
    client = AsyncRedis.from_url(url, retry=rs.retry, retry_on_error=rs.retry_on_error)
    try:
        now = timestamp_ms()
        await redis.zadd("q", {"j1": now - 5, "j2": now - 5})
        await redis.set(job_key("j1"), "{}")
        await redis.set(job_key("j2"), "{}")
        lease = Lease(client, "q", lease_s=3)
        await lease.claim(["nothing"], 1, now)  # the script loaded
        cutter.marker = lease._claim.sha.encode()
        claimed = await lease.claim(["j1", "j2"], 1, now)
        assert cutter.cuts == 1
        assert [(c.raw_id, c.what, c.tries) for c in claimed] == [(b"j1", "run", 1)]
        assert await redis.get(retry_key("j1")) == b"1" and not await redis.exists(retry_key("j2"))
        # another worker's claim does not take the held job
        assert await Lease(redis, "q", lease_s=3).claim(["j1"], 1, now) == []
    finally:
        await client.aclose()
        cutter.server.close()


async def test_a_job_past_job_timeout_ends_as_a_timeout(producer, settings, sim):
    # the job's own deadline (JOB_TIMEOUT_S, worker.calls.jobs): a failed result naming it, long
    # before the worker's backstop (JOB_TIMEOUT_S + 30 s)
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "hang_s": 30})
    s = settings.model_copy(update={"job_timeout_s": 0.5})
    job_id = await producer.chat("gpt-4.1", "hi", fallbacks=[])
    await run_worker(s)
    result = await producer.result(job_id)
    assert result.status == "failed" and result.error.type == "timeout"
    assert "JOB_TIMEOUT_S=0.5" in result.error.message


async def test_a_function_ignoring_its_timeout_is_stopped_at_the_backstop(producer, settings, sim):
    # the worker's backstop (one sweep for every job, worker.process.runner) cancels a function
    # that outlives its timeout: the job fails with a result naming it; the next job runs
    import asyncio

    from arq.worker import func

    async def stuck(ctx, payload, size=0):
        if payload["messages"][0]["content"] == "stuck":
            await asyncio.Event().wait()  # ignores every deadline but a cancel
        return "succeeded"

    stuck_id = await producer.chat("gpt-4.1", "stuck")
    next_id = await producer.chat("gpt-4.1", "next")
    # (bounded: without the backstop the worker would wait for the stuck job for ever)
    worker = await asyncio.wait_for(run_worker(settings, functions=[func(stuck, name="chat", timeout=0.2)]), 30)
    result = await producer.result(stuck_id)
    assert result.status == "failed" and result.error.type == "invalid_job"
    assert "TimeoutError: still running at its backstop, 0.2s" in result.error.message
    assert await producer.result(next_id) is None and worker.jobs_complete == 1  # ran, stored nothing


async def test_a_burst_worker_refills_a_slot_when_it_frees_not_at_its_next_poll(producer, settings, sim):
    # A burst worker draining a queue (a cron job, the benchmarks) takes the next job as soon as
    # a slot frees, as a long-running worker does; before, it slept POLL_DELAY_S after every poll:
    # here three of those, 180 s, for three jobs of one slot each.
    import asyncio

    s = settings.model_copy(update={"worker_concurrency": 1, "poll_delay_s": 60.0})
    ids = [await producer.chat("gpt-4.1", f"job {i}") for i in range(3)]
    # (bounded: it would wait out the poll delay after each job)
    worker = await asyncio.wait_for(run_worker(s), 30)
    assert worker.jobs_complete == 3
    assert [(await producer.result(i)).status for i in ids] == ["succeeded"] * 3


async def test_a_burst_worker_stops_when_its_last_job_ends_not_at_its_next_poll(producer, settings, sim):
    # With a slot to spare the worker polled, found nothing due (its job still running, in the
    # queue under its lease) and slept POLL_DELAY_S before arq looked at the queue again: a
    # burst run ended up to POLL_DELAY_S after its last job. It waits for a job's end instead.
    import asyncio

    s = settings.model_copy(update={"worker_concurrency": 2, "poll_delay_s": 60.0})
    job = await producer.chat("gpt-4.1", "the only one")
    # (bounded: it would wait out the poll delay after the job)
    worker = await asyncio.wait_for(run_worker(s), 30)
    assert worker.jobs_complete == 1 and (await producer.result(job)).status == "succeeded"
