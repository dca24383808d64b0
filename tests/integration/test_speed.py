"""What one job costs in Redis, the lease renewal, and the quiet, optionally JSON, logs.

The budget is the docs' (docs/operations.md, Capacity guide): per chat job that answers at once, one admission,
one round trip recording the call and settling the limits, one storing the result and
releasing the job; the claim is one call per poll for every job it starts; jobs running
together share round trips (worker.process.scripts.Batcher). A change that adds a command or a round
trip to every job fails here."""

from __future__ import annotations

import hashlib
import json
import logging
import sys

from arq.utils import timestamp_ms

from harness.command_count import RedisTraffic
from tests.helpers import run_worker
from worker.contract.keys import RETRY_KEY_TTL_S, in_progress_key
from worker.contract.models import ChatJob
from worker.limits import budgets
from worker.lua import registry as lua
from worker.process import scripts
from worker.process.lease import Lease
from worker.process.logs import JsonFormatter
from worker.process.scripts import preload, run_scripts

# The docs' budget (docs/operations.md, Capacity guide): commands and round trips a job, counted on the wire
# (client side), start-up, polls and the keeper included; measured 5.2 and 3.2.
COMMANDS_PER_JOB = 5.6
ROUND_TRIPS_PER_JOB = 3.6


def chats(n: int) -> list[ChatJob]:
    return [ChatJob(model="gpt-4o-mini", messages=[{"role": "user", "content": f"p{i}"}]) for i in range(n)]


async def run_counted(producer, settings, n: int) -> dict[str, float]:
    """Run n chat jobs with one worker; what it sent to Redis a job (and `commands`, `round_trips`),
    connection set-up aside."""
    ids = await producer.enqueue_many(chats(n))
    with RedisTraffic() as traffic:
        await run_worker(settings)
    assert all([(await producer.result(i)).status == "succeeded" for i in ids])
    names = traffic.by_name
    handshakes = names.pop("CLIENT", 0)  # CLIENT SETINFO on each new connection: not the jobs'
    per_job = {name: count / n for name, count in names.items()}
    commands, round_trips = traffic.commands - handshakes, traffic.round_trips - handshakes
    # polls (claim, the sources' claim of worker.limits.fair, promote), the lease keeper, the outbox and
    # the budget reaper run on timers: their counts follow the run's length (longer on a loaded
    # machine), not the number of jobs
    timers = (
        lua.join("lease_claim", RETRY_KEY_TTL_S=RETRY_KEY_TTL_S),
        lua.join("fair_claim", RETRY_KEY_TTL_S=RETRY_KEY_TTL_S),
        lua.join("lease_promote", RETRY_KEY_TTL_S=RETRY_KEY_TTL_S),
        lua.join("lease_renew"),
        lua.join("outbox_claim"),
        lua.join("budget_reap", "budget_keep", **budgets.CONSTANTS),
    )
    timed = {hashlib.sha1(source.encode()).hexdigest() for source in timers}
    job_shas = set(traffic.scripts) - timed
    job_scripts = sum(traffic.scripts[sha] for sha in job_shas)
    return per_job | {
        "commands": commands / n,
        "round_trips": round_trips / n,
        "job_scripts": job_scripts / n,
        "job_round_trips": traffic.round_trips_with(job_shas) / n,  # timers' round trips aside
    }


async def test_a_job_costs_one_claim_share_one_admission_one_record_one_finish(producer, settings, monkeypatch):
    monkeypatch.setattr(scripts, "batch_calls", lambda redis: None)  # each job's own round trips
    per_job = await run_counted(producer, settings, 300)
    assert per_job["commands"] <= COMMANDS_PER_JOB, per_job
    assert per_job["round_trips"] <= ROUND_TRIPS_PER_JOB, per_job
    # every per-job step is a script; nothing of arq's own per-job round trips is left
    # five scripts a job (admission, record, settle, save, release), and nothing else a job
    assert per_job["job_scripts"] == 5.0, per_job
    assert not {"MULTI", "GET", "INCRBY", "PEXPIRE", "ZREM", "DEL"} & {k for k, v in per_job.items() if v >= 0.05}


async def test_jobs_running_together_share_their_round_trips(producer, settings):
    """Alone a job makes three round trips of its own scripts (admission; record and settlement;
    result and release: 3.0 with batching off); 50 at a time share them: 0.4-0.6 a job on a quiet
    machine. Counted by what each round trip carried, the polls and timers beside them aside
    (they follow the run's length). How many jobs share a round trip depends on how close
    together their answers come, which a loaded machine spreads (up to 1.3 a job measured at
    load 2), so the bound is the one a loaded machine keeps: below two, where jobs that shared
    nothing would make three. That calls made in one turn of the loop share one write is
    tests/integration/test_scripts.py's, exactly."""
    per_job = await run_counted(producer, settings, 300)  # 50 at a time (WORKER_CONCURRENCY)
    assert per_job["commands"] <= COMMANDS_PER_JOB, per_job
    assert per_job["job_round_trips"] < 2.0, per_job


async def test_fair_share_costs_a_job_at_most_one_command_more(make_producer, settings, redis):
    """FAIR_SHARE on, one source alone: the same five scripts a job, and at most one command more a
    job than off, counted on the wire and by Redis itself (commands inside scripts too)."""
    per_job = {}
    for on in (False, True):
        producer = await make_producer(settings.model_copy(update={"fair_share": on}), own_settings=True)
        before = int((await redis.info("stats"))["total_commands_processed"])
        counted = await run_counted(producer, producer.settings, 300)  # the enqueue included
        after = int((await redis.info("stats"))["total_commands_processed"])
        per_job[on] = counted | {"server": (after - before) / 300}
    assert per_job[True]["job_scripts"] == per_job[False]["job_scripts"] == 5.0, per_job
    assert per_job[True]["commands"] <= per_job[False]["commands"] + 1, per_job
    assert per_job[True]["server"] <= per_job[False]["server"] + 1, per_job


async def test_renewal_extends_running_leases_and_keeps_them_out_of_polls(redis):
    lease = Lease(redis, "q", lease_s=3)
    now = timestamp_ms()
    await redis.zadd("q", {"running": now - 10, "ended": now - 10, "waiting": now - 10})
    await redis.psetex(in_progress_key("running"), 100, "1")
    await lease.renew(["running", "ended", "gone"])
    assert 2000 < await redis.pttl(in_progress_key("running")) <= 3000
    scores = dict(await redis.zrange("q", 0, -1, withscores=True))
    assert scores[b"running"] >= now + 3000  # scored at the new lease's end: no poll reads it
    assert scores[b"ended"] == scores[b"waiting"] == now - 10  # no lease: left as it was
    assert not await redis.exists(in_progress_key("ended"), in_progress_key("gone"))


async def test_a_job_given_back_is_due_at_once_and_no_longer_held(redis):
    lease = Lease(redis, "q", lease_s=3)
    now = timestamp_ms()
    await redis.zadd("q", {"cancelled": now + 3000, "deferred": now + 3000})
    await redis.psetex(in_progress_key("cancelled"), 3000, "1")
    await redis.psetex(in_progress_key("deferred"), 3000, "1")
    await lease.let_go("cancelled", now)  # shutdown past the grace: another worker takes it now
    await lease.requeue("deferred", now + 1500)  # arq's Retry(defer=1.5)
    assert dict(await redis.zrange("q", 0, -1, withscores=True)) == {b"cancelled": now, b"deferred": now + 1500}
    assert not await redis.exists(in_progress_key("cancelled"), in_progress_key("deferred"))
    await lease.requeue("finished", now)  # a job no longer queued is not queued again
    assert await redis.zscore("q", "finished") is None


async def test_a_worker_at_info_logs_no_line_per_job(producer, settings, caplog):
    ids = await producer.enqueue_many(chats(20))
    with caplog.at_level(logging.INFO):
        await run_worker(settings)
    assert all([(await producer.result(i)).status == "succeeded" for i in ids])
    per_job = [r.getMessage() for r in caplog.records if any(i in r.getMessage() for i in ids)]
    assert per_job == []
    with caplog.at_level(logging.DEBUG, logger="llm_router"):
        ids = await producer.enqueue_many(chats(3))
        await run_worker(settings)
    assert {i for i in ids for r in caplog.records if i in r.getMessage() and r.levelno == logging.DEBUG} == set(ids)


def test_json_logs_are_one_object_a_line():
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("llm_router.jobs", logging.ERROR, __file__, 1, "job %s\nforged", ("a",), exc_info)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "ERROR" and parsed["logger"] == "llm_router.jobs"
    assert parsed["message"] == "job a\nforged" and "ValueError: boom" in parsed["exc"]
    assert parsed["ts"].endswith("+00:00")


async def test_scripts_sent_together_survive_a_redis_that_lost_them_and_run_once(redis):
    count = redis.register_script("return redis.call('INCR', KEYS[1])")
    echo = redis.register_script("return ARGV[1]")
    await preload(redis, [count, echo])
    assert await run_scripts(redis, [(count, ["n"], []), (echo, [], ["a"])]) == [1, b"a"]
    await redis.script_flush()  # as after a restart: every script is gone
    assert await run_scripts(redis, [(count, ["n"], []), (echo, [], ["b"])]) == [2, b"b"]
    await redis.script_flush()
    await redis.script_load(count.script)  # the first is known, the second not: only it is sent again
    assert await run_scripts(redis, [(count, ["n"], []), (echo, [], ["c"])]) == [3, b"c"]
    await redis.script_flush()
    await redis.script_load(echo.script)  # the first unknown: with rerun_rest, both again, each run once
    assert await run_scripts(redis, [(count, ["n"], []), (echo, [], ["d"])], rerun_rest=True) == [4, b"d"]
    assert await redis.get("n") == b"4"
