"""Schedules (worker.batches.schedules) against a real redis-server, the simulator and real `llm-router
worker` processes: exactly one batch per tick through SIGTERM and SIGKILL around ticks, a missed
tick run once at start-up within the grace (never outside it), a dead worker's unfinished
submission taken over, start-up refusals, the output files written once, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness.processes import WorkerProcess, llm_router, settings_env
from harness.wait import wait_until, wait_until_async
from producers import Batches
from worker.batches import record as wb
from worker.batches import schedules
from worker.contract.keys import SCHEDULES_PENDING, batch_lines_key, schedule_key, schedule_output_key
from worker.contract.models import check_job_id

LINES = 5


def write_input(path: Path, n: int = LINES) -> Path:
    with path.open("w") as f:
        for i in range(n):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"item {i}"}], "max_tokens": 20}
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
            f.write("\n")
    return path


def toml(entries: list[dict]) -> str:
    out = []
    for e in entries:
        out.append("[[schedule]]")
        for k, v in e.items():
            out.append(f"{k} = {json.dumps(v)}" if not isinstance(v, dict) else f"{k} = {_inline(v)}")
    return "\n".join(out) + "\n"


def _inline(d: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"


@pytest.fixture
def sched_settings(settings, tmp_path):
    return settings.model_copy(update={"lease_s": 2.0, "worker_concurrency": 10})


@pytest.fixture
async def producer(make_producer, sched_settings):
    return await make_producer(sched_settings, own_settings=True)


def applied(w: WorkerProcess) -> None:
    w.wait_started(lambda: "schedules: " in w.log(), 30, "a worker to apply its schedules")


async def scheduled(producer, name: str) -> list:
    return [b for b in await producer.batches.list(limit=100) if b.id.startswith(f"batch_sched_{name}_")]


def test_batch_ids_of_schedules_stay_within_the_job_id_charset():
    longest = schedules.Schedule(name="n" * 64, cron="* * * * *", input="x")
    batch_id = longest.batch_id(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert wb.BATCH_ID.match(batch_id) and batch_id == "batch_sched_" + "n" * 64 + "_20261231T235959Z"
    line_id = wb.line_job_id(batch_id, 9_999_999)
    assert check_job_id(line_id) == line_id and wb.line_of(line_id) == (batch_id, 9_999_999)
    assert schedules.tick_of(batch_id) == datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    local = schedules.Schedule(name="a.b-c_d", cron="0 2 * * *", timezone="Europe/Berlin", input="x")
    tick = local.latest_tick(datetime(2026, 7, 1, 12, tzinfo=UTC).timestamp())
    assert local.batch_id(tick) == "batch_sched_a.b-c_d_20260701T000000Z"  # 02:00 in Berlin (CEST) is 00:00 UTC


async def test_submit_under_an_existing_id_is_a_no_op(producer, tmp_path):
    source = write_input(tmp_path / "in.jsonl")
    batch_id = "batch_sched_x_20260101T000000Z"
    results = await asyncio.gather(*[producer.batches.create(source, batch_id=batch_id) for _ in range(4)])
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert {b.id for b, _ in results} == {batch_id}
    assert await producer.redis.llen(batch_lines_key(batch_id)) == LINES  # written once
    again = await producer.batches.submit(source, batch_id=batch_id)
    assert again.id == batch_id and again.request_counts.total == LINES


async def test_three_workers_restarted_and_killed_around_ticks_make_one_batch_per_tick(
    producer, sched_settings, sim, workers, tmp_path
):
    out = tmp_path / "out"
    file = tmp_path / "schedules.toml"
    file.write_text(
        toml(
            [
                {
                    "name": "every3",
                    "cron": "* * * * * */3",
                    "input": str(write_input(tmp_path / "in.jsonl")),
                    "window": "10m",
                    "output": str(out / "{name}-{tick}.jsonl"),
                    "errors": str(out / "{name}-{tick}.errors.jsonl"),
                }
            ]
        )
    )
    settings = sched_settings.model_copy(update={"schedules_file": str(file)})
    every3 = schedules.load(settings)[0]
    running = [workers(settings) for _ in range(3)]
    for w in running:
        applied(w)

    def next_tick() -> float:
        return every3.next_tick(time.time()).timestamp()

    async def until(at: float) -> None:
        await asyncio.sleep(max(at - time.time(), 0))

    # SIGTERM one worker 0.2 s before a tick, start it again; SIGKILL another at the next tick
    first = next_tick()
    await until(first - 0.2)
    running[0].send(signal.SIGTERM)
    assert running[0].wait(30) == 0
    running[0] = workers(settings)
    await until(first + 3)
    running[1].send(signal.SIGKILL)
    running[1].wait(10)
    running[1] = workers(settings)
    # a tick the restarted workers take part in, and its batch completed
    last = every3.batch_id(datetime.fromtimestamp(first + 9, UTC))

    async def last_done():
        batch = await producer.batches.get(last)
        return batch is not None and batch.status == "completed" and await producer.redis.get(schedule_output_key(last))

    await wait_until_async(last_done, 60, f"{last} to complete")
    for w in running:
        w.send(signal.SIGTERM)
    for w in running:
        w.wait(30)

    batches = {b.id: b for b in await scheduled(producer, "every3") if b.id <= last}
    ticks = sorted(t for i in batches if (t := schedules.tick_of(i)) is not None)
    assert len(ticks) >= 5 and ticks[-1] == schedules.tick_of(last)
    # one batch for every tick from the first to the last: none missed, none twice
    assert [t - ticks[0] for t in ticks] == [timedelta(seconds=3 * i) for i in range(len(ticks))]
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(5))
    for batch_id, batch in batches.items():
        assert batch.status == "completed" and batch.request_counts.completed == LINES, batch_id
        assert await producer.redis.llen(batch_lines_key(batch_id)) == LINES  # its lines written once
        assert logs.count(f"batch {batch_id} submitted") == 1, batch_id
        assert logs.count(f"batch {batch_id} completed: wrote") == 1, batch_id  # its output written once
        output = out / f"every3-{batch_id.rsplit('_', 1)[1]}.jsonl"
        assert [json.loads(x)["custom_id"] for x in output.read_text().splitlines()] == [f"r{i}" for i in range(LINES)]
        assert (out / f"every3-{batch_id.rsplit('_', 1)[1]}.errors.jsonl").read_text() == ""
        assert batch.metadata["schedule"] == "every3"
    assert not list(out.glob(".*.tmp"))
    state = await producer.redis.hgetall(schedule_key("every3"))
    assert float(state[b"last_success"]) > 0


def a_past_minute(seconds_ago: int) -> tuple[str, datetime]:
    """A daily cron whose latest tick is about `seconds_ago` ago (UTC), and that tick."""
    tick = (datetime.now(UTC) - timedelta(seconds=seconds_ago)).replace(second=0, microsecond=0)
    return f"{tick.minute} {tick.hour} * * *", tick


@pytest.mark.parametrize("grace", [600, 30])
async def test_a_missed_tick_runs_once_at_start_up_within_the_grace(
    producer, sched_settings, sim, workers, tmp_path, grace
):
    cron, tick = a_past_minute(90)  # 90-150 s ago
    file = tmp_path / "schedules.toml"
    file.write_text(toml([{"name": "daily", "cron": cron, "input": str(write_input(tmp_path / "in.jsonl"))}]))
    settings = sched_settings.model_copy(update={"schedules_file": str(file), "schedule_grace_s": grace})
    pair = [workers(settings), workers(settings)]  # two workers starting together
    batch_id = f"batch_sched_daily_{tick.strftime('%Y%m%dT%H%M%SZ')}"
    if grace == 600:

        async def done():
            batch = await producer.batches.get(batch_id)
            return batch is not None and batch.status == "completed"

        await wait_until_async(done, 60, "the missed tick's batch to complete")
        logs = "".join(w.log() for w in pair)
        assert logs.count("submitted") == 1
        assert [b.id for b in await scheduled(producer, "daily")] == [batch_id]
    else:
        for w in pair:  # each saw the tick, past the grace, and skipped it
            w.wait_started(lambda w=w: "past SCHEDULE_GRACE_S=30: skipped" in w.log(), 30, "the skip")
        assert await scheduled(producer, "daily") == []
        assert await producer.redis.zcard(SCHEDULES_PENDING) == 0


async def test_a_dead_workers_unfinished_submission_is_taken_over(producer, sched_settings, sim, tmp_path):
    """A worker SIGKILLed after writing a tick's lines, before releasing them: its claim expires,
    and the next worker drops the record and submits the tick again, exactly once."""
    source = write_input(tmp_path / "in.jsonl")
    every = schedules.Schedule(name="every", cron="* * * * * */2", input=str(source))
    tick = every.latest_tick(time.time())
    batch_id = every.batch_id(tick)

    async def die(*_args, **_kwargs):
        raise KeyboardInterrupt  # stands for the kill: nothing after this runs

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(Batches, "_release", die)
        patch.setattr(Batches, "drop_unreleased", die)
        await schedules.submit(producer.batches, every, batch_id, tick)
    batches = producer.batches
    assert (await batches.get(batch_id)).status == "validating"
    # the dead worker's claim (it would have expired: LEASE_S)
    scheduler = schedules.Scheduler(producer.batches, [every])
    await producer.redis.set(f"llm-router:schedule:claim:{batch_id}", "dead", px=300)
    assert not await scheduler.fire(every, tick)  # held: nobody else fires it

    async def claim_expired():  # a dead worker renews nothing
        return not await producer.redis.exists(f"llm-router:schedule:claim:{batch_id}")

    await wait_until_async(claim_expired, 5, "the dead worker's claim to expire")
    assert await scheduler.fire(every, tick)
    batch = await batches.get(batch_id)
    assert batch.status == "in_progress" and batch.request_counts.total == LINES
    assert await producer.redis.llen(batch_lines_key(batch_id)) == LINES  # not the dead one's lines again
    assert await producer.redis.zcard(f"llm-router:bulk:{sched_settings.queue_name}") == LINES
    assert float(await producer.redis.hget(schedule_key("every"), "last_tick")) == tick.timestamp()
    assert await scheduler.fire(every, tick)  # again: a no-op
    assert await producer.redis.zcard(f"llm-router:bulk:{sched_settings.queue_name}") == LINES


REFUSALS = {
    "missing input": ({"input": "/no/such/requests.jsonl"}, "input: /no/such/requests.jsonl does not exist"),
    "bad cron": ({"cron": "61 * * * *"}, "cron: '61 * * * *' is not a cron expression"),
    "bad timezone": ({"timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus' is not an IANA time zone"),
    "duplicate names": ({}, "name: used by another schedule"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_a_bad_schedule_refuses_the_start(sched_settings, tmp_path, case):
    change, words = REFUSALS[case]
    entry = {"name": "nightly", "cron": "0 2 * * *", "input": str(write_input(tmp_path / "in.jsonl")), **change}
    entries = [entry, entry] if case == "duplicate names" else [entry]
    file = tmp_path / "schedules.toml"
    file.write_text(toml(entries))
    env = {**os.environ, **settings_env(sched_settings), "SCHEDULES_FILE": str(file)}
    run = subprocess.run([llm_router(), "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "schedule 'nightly'" in lines[0] and words in lines[0], run.stderr


def test_schedule_run_and_list_through_the_cli(sched_settings, sim, workers, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('id,text\nq1,"The quarterly report"\nq2,"The board minutes"\nq3,"The memo"\n')
    out = tmp_path / "out" / "summaries-{date}-{time}.jsonl"
    file = tmp_path / "schedules.toml"
    entry = {
        "name": "nightly",
        "cron": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "prompts": str(prompts),
        "template": "Summarise: {text}",
        "model": "gpt-4o-mini",
        "params": {"max_tokens": 50},
        "metadata": {"team": "search"},
        "output": str(out),
    }
    file.write_text(toml([entry]))
    settings = sched_settings.model_copy(update={"schedules_file": str(file), "schedule_grace_s": 0})
    env = {**os.environ, **settings_env(settings)}

    def cli(*args):
        return subprocess.run([llm_router(), *args], env=env, capture_output=True, text=True, timeout=60)

    listed = cli("schedule", "list")
    assert listed.returncode == 0 and "nightly  0 2 * * * (Europe/Berlin)  next " in listed.stdout
    assert "no batch yet" in listed.stdout
    assert cli("schedule", "run", "nope").returncode == 4  # no such name
    ran = cli("schedule", "run", "nightly")
    assert ran.returncode == 0, ran.stderr
    batch_id = ran.stdout.strip()
    assert batch_id.startswith("batch_sched_nightly_") and wb.BATCH_ID.match(batch_id)
    w = workers(settings)

    def written():
        found = list((tmp_path / "out").glob("summaries-*.jsonl")) if (tmp_path / "out").exists() else []
        return found and "wrote 3 lines" in w.log() and found

    [path] = wait_until(written, 60, "the output file")
    local = schedules.tick_of(batch_id).astimezone(schedules.Schedule("x", "* * * * *", "Europe/Berlin").tz)
    assert path.name == f"summaries-{local:%Y-%m-%d}-{local:%H%M%S}.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["q1", "q2", "q3"]
    assert lines[0]["response"]["body"]["choices"][0]["message"]["content"].endswith("Summarise: The quarterly report")
    listed = cli("schedule", "list", "--json")
    [row] = json.loads(listed.stdout)
    assert row["last_batch"] == batch_id and row["last_status"] == "completed" and row["last_success"]
    assert cli("schedule", "list").stdout.count(f"last {batch_id} completed") == 1
