"""A batch ends whatever happens to its submitter or its workers: cancelled or past its window
with no worker running, its lines are accounted at once; a submission that died before releasing
its lines is reaped, one whose answer was lost is not undone, and no line is staged twice."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from redis.asyncio import Redis

from harness.reply_cutter import ReplyCutter
from harness.wait import wait_until_async
from producers import Producer
from tests.helpers import run_worker, sim_admin
from worker.batches import record as wb
from worker.batches import store as bs
from worker.contract.connections import arq_settings
from worker.contract.keys import batch_staged_key, bulk_key, job_key
from worker.contract.models import JobResult
from worker.lua import registry as lua
from worker.process import wake
from worker.process.lease import Lease


def line(i: int) -> dict:
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": f"prompt {i}"}], "max_tokens": 20}
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


@pytest.fixture
async def producer(make_producer, settings):
    return await make_producer(settings, own_settings=True)


async def outputs(producer, batch_id) -> list[dict]:
    return [entry async for entry in producer.batches.results(batch_id)]


async def nothing_queued(producer) -> bool:
    return (
        await producer.redis.zcard(producer.queue_name) == 0
        and await producer.redis.zcard(bulk_key(producer.queue_name)) == 0
    )


# ---------------------------------------------------------------- no worker running


async def test_a_cancel_with_no_worker_running_ends_the_batch_cancelled(producer, settings, sim):
    batch = await producer.batches.submit([line(i) for i in range(30)])
    # two lines taken by a worker (held under its lease); one of them went back to the queue, deferred
    lease = Lease(producer.redis, settings.queue_name, lease_s=30)
    running, deferred = await lease.promote(2, int(time.time() * 1000))
    await lease.requeue(deferred.raw_id.decode(), int(time.time() * 1000) + 60_000)

    cancelling = await producer.batches.cancel(batch.id)
    counts = cancelling.request_counts
    assert cancelling.status == "cancelling"  # the running line finishes first
    assert (counts.failed, counts.cancelled, counts.completed) == (29, 29, 0)
    assert await producer.redis.zrange(settings.queue_name, 0, -1) == [running.raw_id]  # only the running one
    assert not await producer.redis.exists(job_key(deferred.raw_id.decode()))
    assert await producer.batches.cancel(batch.id) == cancelling  # again: nothing more to end

    job_id = running.raw_id.decode()  # its worker stores it: the last line, the batch ends
    result = JobResult(job_id=job_id, status="succeeded")
    assert await wb.save_line(producer.redis, result, batch.id, wb.line_of(job_id)[1], "gpt-4.1") == 1
    batch = await producer.batches.get(batch.id)
    counts = batch.request_counts
    assert batch.status == "cancelled" and batch.cancelled_at and (counts.completed, counts.cancelled) == (1, 29)
    errors = [o for o in await outputs(producer, batch.id) if o["error"]]
    assert [o["custom_id"] for o in errors] == [f"r{i}" for i in range(1, 30)]
    assert {o["error"]["code"] for o in errors} == {"batch_cancelled"}
    assert batch.models["gpt-4.1"].failed == 29
    assert sim_admin(sim, "/_sim/stats")["calls"] == {}


async def calls(redis: Redis) -> dict[str, int]:
    """How many times Redis ran each command so far (INFO commandstats)."""
    return {name.removeprefix("cmdstat_"): stat["calls"] for name, stat in (await redis.info("commandstats")).items()}


async def test_polling_a_cancelling_batch_does_not_read_every_line_each_time(producer, settings):
    # before: every read of a `cancelling` batch ran the reaper's script and read all its lines
    # (worker.batches.record.end_waiting: LRANGE, MGET), for each reader, however often it polled
    batch = await producer.batches.submit([line(i) for i in range(30)])
    lease = Lease(producer.redis, settings.queue_name, lease_s=30)
    await lease.promote(1, int(time.time() * 1000))  # a line running: the batch stays `cancelling`
    cancelling = await producer.batches.cancel(batch.id)  # the cancel ends the 29 waiting lines at once
    assert cancelling.status == "cancelling" and cancelling.request_counts.cancelled == 29

    before = await calls(producer.redis)
    polls = [await producer.batches.get(batch.id) for _ in range(20)]
    ran = {k: n - before.get(k, 0) for k, n in (await calls(producer.redis)).items() if n != before.get(k, 0)}
    assert polls == [cancelling] * 20  # what a reader sees is the same
    assert not {"lrange", "mget", "evalsha", "eval"} & set(ran), ran  # only the record was read
    assert 0 < await producer.redis.pttl(bs.batch_swept_key(batch.id)) <= bs.SWEEP_S * 1000

    await producer.redis.delete(bs.batch_swept_key(batch.id))  # SWEEP_S later: the next read sweeps
    before = await calls(producer.redis)
    assert await producer.batches.get(batch.id) == cancelling
    assert (await calls(producer.redis))["lrange"] > before["lrange"]


async def test_a_cancelled_batch_a_worker_picks_later_is_not_counted_twice(producer, settings, sim):
    batch = await producer.batches.submit([line(i) for i in range(10)])
    assert (await producer.batches.cancel(batch.id)).status == "cancelled"
    await run_worker(settings)  # nothing left for it
    batch = await producer.batches.get(batch.id)
    assert batch.request_counts.cancelled == 10 and batch.request_counts.failed == 10
    assert await nothing_queued(producer) and sim_admin(sim, "/_sim/stats")["calls"] == {}


async def test_past_its_window_with_no_worker_a_batch_reads_expired(producer):
    batch = await producer.batches.submit([line(i) for i in range(5)], completion_window="1s")

    async def expired():
        found = await producer.batches.get(batch.id)
        return found if found.status == "expired" else None

    batch = await wait_until_async(expired, 15, "the batch to read expired")
    assert batch.request_counts.expired == 5 and batch.expired_at and await nothing_queued(producer)
    assert {o["error"]["code"] for o in await outputs(producer, batch.id)} == {"batch_expired"}


async def test_a_cancel_during_submission_ends_the_lines_once_released(producer, monkeypatch):
    release = bs.BatchStore._release

    async def cancelled_first(self, batch_id, owner):
        await self.cancel(batch_id)  # the batch is `validating`: nothing of it is queued yet
        return await release(self, batch_id, owner)

    monkeypatch.setattr(bs.BatchStore, "_release", cancelled_first)
    batch = await producer.batches.submit([line(i) for i in range(8)])
    assert batch.status == "cancelled" and batch.request_counts.cancelled == 8 and await nothing_queued(producer)


# ---------------------------------------------------------------- the submitter


SUBMIT_THEN_DIE = textwrap.dedent(
    """
    import asyncio, sys
    from producers import Producer, batches

    async def never(self, batch_id, owner):  # the process dies before it releases the lines
        print(batch_id, flush=True)
        await asyncio.Event().wait()

    batches.Batches._release = never
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}} for i in range(20)]

    async def main():
        async with Producer() as producer:
            await producer.batches.submit(lines)

    asyncio.run(main())
    """
)


async def test_a_submission_that_died_before_releasing_is_reaped(producer, settings, tmp_path):
    env = {**os.environ, "REDIS_URL": settings.redis_url, "QUEUE_NAME": settings.queue_name, "LEASE_S": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SUBMIT_THEN_DIE], env=env, stdout=subprocess.PIPE, text=True)
    try:
        batch_id = (await asyncio.to_thread(proc.stdout.readline)).strip()
        assert (await producer.batches.get(batch_id)).status == "validating"  # its submitter renews the lease
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.stdout.close()

    async def reaped():
        found = await producer.batches.get(batch_id)
        return found if found.status != "validating" else None

    batch = await wait_until_async(reaped, 15, "the dead submission's batch to be reaped")
    assert batch.status == "failed" and batch.failed_at and batch.interrupted
    assert batch.errors.data[0].code == wb.INTERRUPTED and "submit the file again" in batch.errors.data[0].message
    assert await nothing_queued(producer) and not await producer.redis.exists(batch_staged_key(batch_id))
    assert not await producer.redis.exists(job_key(wb.line_job_id(batch_id, 1)))  # its records are gone
    # a submitter only stalled is fenced off: its record has no owner any more
    assert await producer.batches._release(batch_id, "its-old-owner") == -2
    # a schedule taking the id over drops it and submits again (worker.batches.schedules)
    assert await producer.batches.drop_unreleased(batch_id) and await producer.batches.get(batch_id) is None


async def cut_client(url: str, script: str, retrying: bool) -> tuple[ReplyCutter, Redis]:
    """A client through a proxy that loses the answer to the next call of `script` (loaded first,
    so it is sent by its sha); `retrying`: the client sends it again, as a worker's does."""
    cutter = ReplyCutter(url)
    proxied = await cutter.start()
    rs = arq_settings(proxied)
    client = Redis.from_url(proxied, retry=rs.retry, retry_on_error=rs.retry_on_error) if retrying else None
    client = client or Redis.from_url(proxied)
    await client.script_load(script)
    cutter.marker = hashlib.sha1(script.encode()).hexdigest().encode()
    return cutter, client


async def test_a_lost_answer_to_the_release_keeps_the_batch(settings):
    release = lua.join("wake", "batch_store_release", **wake.CONSTANTS)
    cutter, client = await cut_client(settings.redis_url, release, retrying=False)
    async with Producer(queue_name=settings.queue_name, redis=client) as producer:
        try:
            batch = await producer.batches.submit([line(i) for i in range(6)])  # was: ConnectionError
            assert cutter.cuts == 1
            assert batch.status == "in_progress" and batch.request_counts.total == 6
            assert await producer.redis.zcard(bulk_key(settings.queue_name)) == 6
            await run_worker(settings)
            assert (await producer.batches.get(batch.id)).status == "completed"
        finally:
            await client.aclose()
            cutter.server.close()


@pytest.mark.parametrize("script", ["create", "stage"])
async def test_a_lost_answer_sent_again_creates_and_stages_once(settings, script):
    cutter, client = await cut_client(settings.redis_url, lua.join(f"batch_store_{script}"), True)
    async with Producer(queue_name=settings.queue_name, redis=client) as producer:
        try:
            batch = await producer.batches.submit([line(i) for i in range(6)])
            assert cutter.cuts == 1
            # create: was the batch's own record taken for another's (left `validating`, never written)
            assert batch.status == "in_progress" and await producer.redis.zcard(bulk_key(settings.queue_name)) == 6
            await run_worker(settings)
            out = await outputs(producer, batch.id)
            assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(6)]  # stage: was every line twice
            assert (await producer.batches.get(batch.id)).status == "completed"
        finally:
            await client.aclose()
            cutter.server.close()
