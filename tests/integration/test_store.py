"""The result store and call log, on fakeredis (fast) and on the real redis-server (the Lua
and expiry must hold there too)."""

import asyncio

import fakeredis
import pytest
from redis.asyncio import Redis

from worker.contract.keys import CREDITS, DLQ_INDEX, SPEND_TOTAL, calls_key, recent_jobs_key, result_key, spend_day_key
from worker.contract.models import Attempt, JobResult, Usage
from worker.contract.store import ResultStore


@pytest.fixture(params=["fakeredis", "redis-server"])
async def store(request):
    if request.param == "fakeredis":
        redis = fakeredis.FakeAsyncRedis()
    else:
        redis = Redis.from_url(request.getfixturevalue("redis_url"))
    yield ResultStore(redis, ttl_s=60)
    await redis.aclose()


def chat_result(job_id="j1", model="gpt-4.1", cost=0.25):
    return JobResult(job_id=job_id, kind="chat", status="succeeded", model=model, content="hi", cost=cost)


async def record(store, job_id, call_id, model, cost, credits=None, at=1.0, run=1):
    attempt = Attempt(model=model, ok=cost is not None, latency_s=0.1, cost=cost, call_id=call_id, at=at, run=run)
    return await store.record_call(job_id, attempt, credits)


async def test_save_then_get_with_ttl(store):
    await store.save(chat_result())
    assert (await store.get("j1")).content == "hi"
    assert 0 < await store.redis.ttl(result_key("j1")) <= 60
    assert await store.get("missing") is None


async def test_spend_is_summed_per_model_total_and_per_day(store):
    await record(store, "a", "c1", "gpt-4.1", 0.25)
    await record(store, "b", "c1", "gpt-4.1", 0.5)
    await record(store, "c", "c1", "gpt-4.1", 0.1)
    await record(store, "c", "c2", "claude-3-sonnet", 0.2)
    await record(store, "d", "c1", "nope", None)  # a failed call: logged, costs nothing
    assert await store.spend() == pytest.approx({"gpt-4.1": 0.85, "claude-3-sonnet": 0.2})
    assert await store.spend(spend_day_key()[-10:]) == pytest.approx({"gpt-4.1": 0.85, "claude-3-sonnet": 0.2})
    assert await store.redis.exists(SPEND_TOTAL)


async def test_a_call_is_counted_once_however_often_it_is_recorded(store):
    assert await record(store, "j", "call-1", "gpt-4.1", 0.5) == 1
    assert await record(store, "j", "call-1", "gpt-4.1", 0.5) == 0  # a retried write after a lost reply
    assert await record(store, "j", "call-2", "gpt-4.1", 0.25, run=2, at=2.0) == 1  # the re-run's own call
    assert await store.spend() == pytest.approx({"gpt-4.1": 0.75})
    attempts = await store.attempts("j")
    assert [(a.call_id, a.run) for a in attempts] == [("call-1", 1), ("call-2", 2)]
    assert 0 < await store.redis.ttl(calls_key("j")) <= 60


async def test_credits_keep_the_latest_report(store):
    await record(store, "a", "c1", "gpt-4.1", 0.1, credits=9.5)
    await record(store, "b", "c1", "gpt-4.1", 0.1, credits=9.25)
    await record(store, "c", "c1", "gpt-4.1", 0.1)  # a reply without credits leaves them alone
    assert float(await store.redis.hget(CREDITS, "remaining")) == 9.25
    assert float(await store.redis.hget(CREDITS, "updated_at")) > 1.7e9


async def test_wait_wakes_when_the_result_is_saved(store):
    waiter = asyncio.create_task(store.wait("late", timeout=5))
    await asyncio.sleep(0.05)  # let the waiter subscribe first (it also reads after subscribing)
    await store.save(chat_result("late"))
    assert (await asyncio.wait_for(waiter, 5)).job_id == "late"


async def test_wait_times_out_with_none(store):
    assert await store.wait("never", timeout=0.05) is None


async def test_each_saved_result_is_listed_as_recent_kept_within_its_bound(store, monkeypatch):
    """Every job that ended goes on the every-source stream, a source's also on its own; each is
    trimmed (MAXLEN ~: whole nodes of 100 entries) and expires with the newest result."""
    monkeypatch.setattr("worker.contract.store.RECENT_JOBS_MAX", 5)
    await store.save(chat_result("plain"))
    failed = JobResult(job_id="team-a@x", kind="chat", status="failed", source="team-a")
    await store.save(failed, dead_letter="{}")
    mine = await store.redis.xrange(recent_jobs_key("team-a"))
    assert [(f[b"id"], f[b"status"], f[b"source"]) for _, f in mine] == [(b"team-a@x", b"dead-lettered", b"team-a")]
    every = await store.redis.xrange(recent_jobs_key())
    assert [(f[b"id"], f[b"status"], f[b"model"], f[b"cost"]) for _, f in every] == [
        (b"plain", b"succeeded", b"gpt-4.1", b"0.25"),
        (b"team-a@x", b"dead-lettered", b"", b""),
    ]
    assert 0 < await store.redis.ttl(recent_jobs_key()) <= 60 and await store.redis.ttl(recent_jobs_key("team-a")) > 0
    for i in range(300):
        await store.save(chat_result(f"j{i}"))
    assert await store.redis.xlen(recent_jobs_key()) <= 5 + 100
    newest = await store.redis.xrevrange(recent_jobs_key(), count=1)
    assert newest[0][1][b"id"] == b"j299"
    assert await store.redis.xlen(recent_jobs_key("team-a")) == 1


async def test_the_same_result_stored_again_adds_no_copy(store):
    """A store sent again after its answer was lost (the client's resend) finds the same result and
    adds nothing: one recent-jobs entry, one dead letter; a new result of the job is stored in full."""
    failed = JobResult(job_id="team-a@r", kind="chat", status="failed", source="team-a")
    for _ in range(2):
        await store.save(failed, dead_letter="{}")
    assert await store.redis.xlen(recent_jobs_key()) == await store.redis.xlen(recent_jobs_key("team-a")) == 1
    assert await store.redis.zcard(DLQ_INDEX) == 1
    await store.save(failed.model_copy(update={"runs": 2}), dead_letter="{}")
    assert await store.redis.xlen(recent_jobs_key()) == 2
    assert (await store.get("team-a@r")).runs == 2


async def test_a_calls_spend_is_kept_by_source_and_model_together(store):
    from worker.observe.spend import read_day, source_report

    usage = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    attempt = Attempt(model="gpt-4.1", ok=True, latency_s=0.1, cost=0.25, call_id="c1", at=1.0)
    await store.record_call("a", attempt, None, usage, {"source": "team-a"})
    await store.record_call("a", attempt, None, usage, {"source": "team-a"})  # sent again: counted once
    await store.record_call("b", attempt.model_copy(update={"model": "o3"}), None, usage, {"source": "team-b"})
    await store.record_call("c", attempt.model_copy(update={"call_id": "c3"}), None, usage, {})  # no source
    lines = await read_day(store.redis, "source-model", spend_day_key()[-10:])
    assert {n: (line.usd, line.calls, line.prompt_tokens) for n, line in lines.items()} == {
        "team-a|gpt-4.1": (0.25, 1, 3),
        "team-b|o3": (0.25, 1, 3),
    }
    mine = await source_report(store.redis, 2, "team-a")
    assert [(r.name, r.usd, r.completion_tokens) for r in mine.rows] == [("gpt-4.1", 0.25, 4)]
    assert [d.usd for d in mine.daily] == [0.0, 0.25] and mine.total.calls == 1
