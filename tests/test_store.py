"""The result store on fakeredis (fast); the worker tests run the same code on a real Redis."""

import asyncio

import fakeredis
import pytest

from worker.models import JobResult, ModelAnswer
from worker.store import CREDITS, SPEND_TOTAL, ResultStore, result_key, spend_day_key


@pytest.fixture
async def store():
    redis = fakeredis.FakeAsyncRedis()
    yield ResultStore(redis, ttl_s=60)
    await redis.aclose()


def chat_result(job_id="j1", model="gpt-4.1", cost=0.25, credits=9.5):
    return JobResult(job_id=job_id, kind="chat", status="succeeded", model=model, content="hi",
                     cost=cost, credits_remaining=credits)


async def test_save_then_get_with_ttl(store):
    await store.save(chat_result())
    assert (await store.get("j1")).content == "hi"
    assert 0 < await store.redis.ttl(result_key("j1")) <= 60
    assert await store.get("missing") is None


async def test_spend_is_summed_per_model_total_and_per_day(store):
    await store.save(chat_result("a", "gpt-4.1", 0.25))
    await store.save(chat_result("b", "gpt-4.1", 0.5))
    await store.save(JobResult(job_id="c", kind="compare", status="succeeded", cost=0.3, answers=[
        ModelAnswer(model="gpt-4.1", status="succeeded", cost=0.1),
        ModelAnswer(model="claude-3-sonnet", status="succeeded", cost=0.2),
        ModelAnswer(model="nope", status="failed")]))
    await store.save(JobResult(job_id="d", kind="chat", status="failed"))
    assert await store.spend() == pytest.approx({"gpt-4.1": 0.85, "claude-3-sonnet": 0.2})
    assert await store.spend(spend_day_key()[-10:]) == pytest.approx({"gpt-4.1": 0.85, "claude-3-sonnet": 0.2})
    assert await store.redis.exists(SPEND_TOTAL)


async def test_credits_keep_the_latest_report(store):
    await store.save(chat_result("a", credits=9.5))
    await store.save(chat_result("b", credits=9.25))
    assert float(await store.redis.hget(CREDITS, "remaining")) == 9.25


async def test_wait_wakes_when_the_result_is_saved(store):
    waiter = asyncio.create_task(store.wait("late", timeout=5))
    await asyncio.sleep(0)  # let the waiter subscribe first
    await store.save(chat_result("late"))
    assert (await asyncio.wait_for(waiter, 5)).job_id == "late"


async def test_wait_times_out_with_none(store):
    assert await store.wait("never", timeout=0.05) is None
