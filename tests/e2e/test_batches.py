"""Batches (OpenAI's Batch format) against a real redis-server, the simulator and real
`llm-router worker` processes: exact counts and cost through failures, SIGKILL, cancel and
expiry; validation that refuses a bad file whole and leaves Redis untouched."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from harness.processes import llm_router
from harness.wait import wait_until_async
from producers import BatchRejected
from tests.helpers import run_worker, sim_admin
from worker.batches import record as wb
from worker.contract.keys import batch_done_key, batch_key, result_key
from worker.contract.models import JobResult, Usage


def line(i: int | str, model: str = "gpt-4.1", **extra: object) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": f"prompt {i}"}], "max_tokens": 20, **extra}
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


@pytest.fixture
def batch_settings(settings):
    # failures fail fast and the circuit stays closed: every failing line is a real call
    return settings.model_copy(
        update={"attempts_per_model": 1, "circuit_failures": 100_000, "lease_s": 2.0, "worker_concurrency": 25}
    )


@pytest.fixture
async def producer(make_producer, batch_settings):
    return await make_producer(batch_settings, own_settings=True)


async def final(producer, batch_id, timeout=120):
    async def check():
        batch = await producer.batches.get(batch_id)
        return batch if batch.final else None

    return await wait_until_async(check, timeout, f"batch {batch_id} to end")


async def outputs(producer, batch_id):
    out: list[dict] = []
    err: list[dict] = []
    async for entry in producer.batches.results(batch_id):
        (out if entry["error"] is None else err).append(entry)
    return out, err


async def test_a_batch_with_failures_through_worker_processes_counts_exactly(producer, batch_settings, sim, workers):
    sim_admin(sim, "/_sim/config", {"model": "claude-3-sonnet", "down": True})
    lines = []
    for i in range(2000):
        if i % 10 == 3:
            lines.append(line(i, "claude-3-sonnet", llm_router={"fallbacks": []}))  # 503: server
        elif i % 10 == 7:
            lines.append(line(i, "no-such-model"))  # 404: not_found
        else:
            lines.append(line(i, "gpt-4o-mini" if i % 2 else "gpt-4.1"))
    batch = await producer.batches.submit(lines, metadata={"team": "search"})
    assert batch.status == "in_progress" and batch.request_counts.total == 2000 and batch.metadata == {"team": "search"}
    for _ in range(3):
        workers(batch_settings)
    batch = await final(producer, batch.id)

    stats = sim_admin(sim, "/_sim/stats")
    ok = [f"r{i}" for i in range(2000) if i % 10 not in (3, 7)]
    bad = [f"r{i}" for i in range(2000) if i % 10 in (3, 7)]
    assert batch.status == "completed" and batch.completed_at and batch.finalizing_at
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(ok), len(bad))
    assert batch.cost_usd == pytest.approx(stats["charged_total"], abs=1e-6)
    assert batch.models["claude-3-sonnet"].failed == 200 and batch.models["no-such-model"].failed == 200
    assert (
        batch.usage.input_tokens > 0
        and batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens
    )

    out, err = await outputs(producer, batch.id)
    assert [o["custom_id"] for o in out] == ok and [e["custom_id"] for e in err] == bad  # input order
    first = out[0]
    assert first["response"]["status_code"] == 200 and first["response"]["body"]["object"] == "chat.completion"
    assert first["response"]["body"]["choices"][0]["message"]["content"] == "[gpt-4.1] You said: prompt 0"
    assert first["response"]["body"]["usage"]["cost"] == first["llm_router"]["cost"] > 0
    assert sum(o["llm_router"]["cost"] for o in out) == pytest.approx(stats["charged_total"], abs=1e-6)
    codes = {e["custom_id"]: e["error"]["code"] for e in err}
    assert codes["r3"] == "server" and codes["r7"] == "not_found"
    assert err[0]["response"]["status_code"] == 503
    # results live as long as the batch (past RESULT_TTL_S), and no failed line was dead-lettered
    ttl = await producer.redis.ttl(result_key(first["id"]))
    assert ttl > batch_settings.result_ttl_s and abs(ttl - await producer.redis.ttl(batch_key(batch.id))) < 5
    assert await producer.dead_letters.ids() == []


async def test_a_worker_killed_mid_batch_changes_no_count_and_no_cost(producer, batch_settings, sim, workers):
    sim_admin(sim, "/_sim/config", {"latency_ms": 300})
    settings = batch_settings.model_copy(update={"worker_concurrency": 10})
    batch = await producer.batches.submit([line(i) for i in range(150)])
    a = workers(settings)

    async def busy_and_some_done():  # calls of the worker in flight, and lines already counted
        in_flight = sim_admin(sim, "/_sim/stats")["in_flight"] >= 5
        return in_flight and (await producer.batches.get(batch.id)).done >= 10

    await wait_until_async(busy_and_some_done, 30, "some lines done and calls in flight")
    a.send(signal.SIGKILL)
    a.wait(10)
    workers(settings)
    batch = await final(producer, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 150 and batch.request_counts.failed == 0
    assert batch.cost_usd == pytest.approx(sim_admin(sim, "/_sim/stats")["charged_total"], abs=1e-6)
    out, err = await outputs(producer, batch.id)
    assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(150)] and err == []
    assert any(o["llm_router"]["runs"] == 2 for o in out)  # the killed worker's lines ran again
    assert sim_admin(sim, "/_sim/stats")["calls"]["gpt-4.1"] > 150  # calls cut by the kill, not billed


async def test_cancel_mid_run_never_calls_for_queued_lines(producer, batch_settings, sim, workers):
    sim_admin(sim, "/_sim/config", {"latency_ms": 200})
    batch = await producer.batches.submit([line(i) for i in range(300)])
    workers(batch_settings.model_copy(update={"worker_concurrency": 5}))

    async def some_done():
        return (await producer.batches.get(batch.id)).done >= 10

    await wait_until_async(some_done, 20, "some lines done")
    cancelling = await producer.batches.cancel(batch.id)
    # the cancel ends every line no worker holds at once: at most the 5 running ones are left
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    assert cancelling.done >= 300 - 5
    batch = await final(producer, batch.id)
    counts = batch.request_counts
    calls = sum(sim_admin(sim, "/_sim/stats")["calls"].values())
    assert batch.status == "cancelled" and batch.cancelled_at
    assert counts.completed + counts.failed == 300 and counts.failed == counts.cancelled
    assert calls == counts.completed < 100  # lines already running finished; queued ones never called
    out, err = await outputs(producer, batch.id)
    assert len(out) == counts.completed and {e["error"]["code"] for e in err} == {"batch_cancelled"}
    assert [x["custom_id"] for x in sorted(out + err, key=lambda x: x["id"])] == [f"r{i}" for i in range(300)]
    assert (await producer.batches.cancel(batch.id)).status == "cancelled"  # final: left as it is


async def test_lines_not_started_within_the_window_expire(producer, batch_settings, sim, workers):
    sim_admin(sim, "/_sim/config", {"latency_ms": 300})
    batch = await producer.batches.submit([line(i) for i in range(60)], completion_window="1.5s")
    assert batch.completion_window == "1.5s" and batch.expires_at - batch.created_at <= 2
    workers(batch_settings.model_copy(update={"worker_concurrency": 2}))
    batch = await final(producer, batch.id, timeout=60)
    counts = batch.request_counts
    assert batch.status == "expired" and batch.expired_at
    assert counts.expired > 30 and counts.completed + counts.expired == 60 and counts.failed == counts.expired
    assert sum(sim_admin(sim, "/_sim/stats")["calls"].values()) == counts.completed
    _, err = await outputs(producer, batch.id)
    assert {e["error"]["code"] for e in err} == {"batch_expired"} and err[-1]["custom_id"] == "r59"


async def test_a_cancelled_batch_ends_in_process_without_a_call_and_is_exported(producer, batch_settings, sim):
    from prometheus_client import REGISTRY, CollectorRegistry

    from worker.observe.exporter import QueueCollector

    before = REGISTRY.get_sample_value("llm_router_batch_lines_total", {"outcome": "cancelled"}) or 0
    batch = await producer.batches.submit([line(i) for i in range(20)])
    # cancelled as a worker finds it when the canceller could not end the lines (they were running,
    # then went back to the queue): the worker ends them (a cancel ends waiting lines itself, below)
    await producer.redis.hset(batch_key(batch.id), "status", "cancelling")
    await run_worker(batch_settings)
    await producer.batches.submit([line(i) for i in range(2)])  # stays in_progress: no worker runs it
    batch = await producer.batches.get(batch.id)
    assert batch.status == "cancelled" and batch.request_counts.cancelled == 20
    assert sim_admin(sim, "/_sim/stats")["calls"] == {}
    assert REGISTRY.get_sample_value("llm_router_batch_lines_total", {"outcome": "cancelled"}) == before + 20
    registry = CollectorRegistry()
    registry.register(QueueCollector(batch_settings))
    exported = {s: registry.get_sample_value("llm_router_batches", {"status": s}) for s in wb.STATUSES}
    assert exported == {s: {"cancelled": 1.0, "in_progress": 1.0}.get(s, 0.0) for s in wb.STATUSES}


async def test_a_line_is_counted_once_whatever_runs_it_twice(producer, redis):
    batch = await producer.batches.submit([line(1), line(2)])
    job_id = wb.line_job_id(batch.id, 1)
    result = JobResult(
        job_id=job_id, status="succeeded", model="gpt-4.1", cost=0.25, usage=Usage(prompt_tokens=3, completion_tokens=4)
    )
    assert await wb.save_line(redis, result, batch.id, 1, "gpt-4.1") == 1
    assert await wb.save_line(redis, result, batch.id, 1, "gpt-4.1") == 0  # a second run: no change
    again = await producer.batches.get(batch.id)
    assert again.request_counts.completed == 1 and again.cost_usd == 0.25 and again.usage.total_tokens == 7
    assert await redis.hgetall(batch_done_key(batch.id)) == {b"1": b"succeeded"}
    assert again.status == "in_progress"


BAD_LINES = [
    ("{not json", "invalid_json", None),
    ("   ", "empty_line", None),
    (json.dumps(line(0)), "duplicate_custom_id", "custom_id"),
    (json.dumps({**line(9), "url": "/v1/embeddings"}), "invalid_url", "url"),
    (json.dumps({**line(9), "method": "GET"}), "invalid_method", "method"),
    (json.dumps({k: v for k, v in line(9).items() if k != "custom_id"}), "missing_custom_id", "custom_id"),
    (json.dumps({**line(9), "body": "hi"}), "invalid_body", "body"),
    (json.dumps(line(9, temperature=3)), "invalid_request", "body.temperature"),
    (json.dumps(line(9, llm_router={"retries": 3})), "invalid_request", "body.llm_router.retries"),
    (json.dumps(line(9, llm_router={"fallbacks": ["bad model"]})), "invalid_request", "body.llm_router.fallbacks.0"),
    (json.dumps(line(9, max_tokens=500_000)), "invalid_request", "body.max_tokens"),
    (json.dumps(line(9, fallbacks=["gpt-4o"])), "invalid_request", "body.fallbacks"),
    (json.dumps(line("big", messages=[{"role": "user", "content": "x" * 3000}])), "line_too_large", None),
]


@pytest.mark.parametrize(("bad", "code", "param"), BAD_LINES, ids=[c for _, c, _ in BAD_LINES])
async def test_a_bad_line_refuses_the_whole_batch_and_writes_nothing(
    make_producer, batch_settings, redis, tmp_path, bad, code, param
):
    producer = await make_producer(batch_settings.model_copy(update={"batch_max_line_bytes": 2048}), own_settings=True)
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([json.dumps(line(0)), bad, json.dumps(line(1))]) + "\n")
    with pytest.raises(BatchRejected) as refused:
        await producer.batches.submit(path)
    [error] = refused.value.errors
    assert (error.code, error.line, error.param) == (code, 2, param) and error.message
    assert await redis.keys("*") == []  # no trace
    # --skip-invalid: the rest is enqueued, the refused line kept in the record
    batch = await producer.batches.submit(path, skip_invalid=True)
    assert batch.request_counts.total == 2 and batch.invalid_lines == 1
    assert batch.errors.data[0].line == 2 and batch.errors.data[0].code == code
    assert await producer.queued() == 2


async def test_over_the_file_limits_is_refused(make_producer, batch_settings, redis):
    few = await make_producer(batch_settings.model_copy(update={"batch_max_lines": 3}), own_settings=True)
    with pytest.raises(BatchRejected) as refused:
        await few.batches.submit([line(i) for i in range(5)])
    assert refused.value.errors[0].code == "too_many_lines" and refused.value.errors[0].line == 4
    small = batch_settings.model_copy(update={"batch_max_lines": 50_000, "batch_max_bytes": 1000})
    producer = await make_producer(small, own_settings=True)
    with pytest.raises(BatchRejected) as refused:
        await producer.batches.submit([line(i) for i in range(50)])
    assert refused.value.errors[0].code == "file_too_large"
    with pytest.raises(BatchRejected, match="not a duration"):
        await producer.batches.submit([line(1)], completion_window="tomorrow")
    with pytest.raises(BatchRejected, match="at most 16 pairs"):
        await producer.batches.submit([line(1)], metadata={str(i): "v" for i in range(17)})
    assert await redis.keys("*") == []


async def test_compare_lines_vision_parts_and_list(producer, batch_settings, sim):
    compare = {
        "custom_id": "c1",
        "method": "POST",
        "url": "/v1/llm-router/compare",
        "body": {"models": ["gpt-4.1", "claude-3-sonnet"], "messages": [{"role": "user", "content": "2+2?"}]},
    }
    cmp_batch = await producer.batches.submit([json.dumps(compare)])
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    vision = line("v", "gpt-4o", max_completion_tokens=30)  # OpenAI's newer name for max_tokens
    del vision["body"]["max_tokens"]
    vision["body"]["messages"] = [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]
    chat_batch = await producer.batches.submit([vision])
    await run_worker(batch_settings)
    [out], _ = await outputs(producer, cmp_batch.id)
    body = out["response"]["body"]
    assert body["object"] == "llm_router.compare" and [a["model"] for a in body["answers"]] == [
        "gpt-4.1",
        "claude-3-sonnet",
    ]
    assert body["usage"]["cost"] == pytest.approx(sum(a["cost"] for a in body["answers"]))
    [out], _ = await outputs(producer, chat_batch.id)
    assert out["response"]["body"]["model"] == "gpt-4o"
    listed = await producer.batches.list()
    assert [b.id for b in listed] == [chat_batch.id, cmp_batch.id]
    assert [b.id for b in await producer.batches.list(after=chat_batch.id)] == [cmp_batch.id]
    assert all(b.status == "completed" for b in listed)


# ---------------------------------------------------------------- the CLI, end to end


@pytest.fixture
def env(batch_settings):
    from harness.processes import settings_env

    return {**os.environ, **settings_env(batch_settings)}


def cli(env, *args, timeout=120):
    return subprocess.run([llm_router(), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_submit_wait_status_results_cancel_list(env, batch_settings, sim, workers, tmp_path):
    sim_admin(sim, "/_sim/config", {"model": "claude-3-sonnet", "down": True})
    requests = tmp_path / "requests.jsonl"
    lines = [line(i) if i % 5 else line(i, "claude-3-sonnet", llm_router={"fallbacks": []}) for i in range(40)]
    requests.write_text("".join(json.dumps(x) + "\n" for x in lines))
    workers(batch_settings)
    out, errs = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    args = ["batch", "submit", str(requests), "--wait", "-o", str(out), "--errors", str(errs)]
    done = cli(env, *args, "--window", "2h", "--metadata", "team=search", "--metadata", "run=7")
    assert done.returncode == 1, done.stderr  # some lines failed
    batch_id = done.stdout.splitlines()[0]
    assert wb.BATCH_ID.match(batch_id) and "completed" in done.stdout.splitlines()[-1]
    assert "/40 done" in done.stderr and "lines/min" in done.stderr and "ETA" in done.stderr  # plain progress
    # why they failed, on stderr: grouped by error code, a few custom ids, and where the rest is
    assert "llm-router: 8 lines failed:" in done.stderr
    [reason] = [x for x in done.stderr.splitlines() if x.startswith("  ")]
    assert "(e.g. r0, r5, r10, ...)" in reason and reason.split(":")[0].strip() in ("server", "not_found")
    assert f"every failed line with its error: in {errs}" in done.stderr
    ok = [json.loads(x)["custom_id"] for x in out.read_text().splitlines()]
    bad = [json.loads(x)["custom_id"] for x in errs.read_text().splitlines()]
    assert ok == [f"r{i}" for i in range(40) if i % 5] and bad == [f"r{i}" for i in range(0, 40, 5)]

    status = cli(env, "batch", "status", batch_id, "--json")
    record = json.loads(status.stdout)
    assert record["status"] == "completed" and record["request_counts"]["failed"] == 8
    assert record["metadata"] == {"team": "search", "run": "7"} and record["completion_window"] == "2h"
    assert record["cost_usd"] == pytest.approx(sim_admin(sim, "/_sim/stats")["charged_total"], abs=1e-6)
    status = cli(env, "batch", "status", batch_id)
    assert "40/40 done, 8 failed" in status.stdout and status.returncode == 1
    assert "llm-router: 8 lines failed:" in status.stderr and "(e.g. r0, r5, r10, ...)" in status.stderr
    assert f"every failed line with its error: llm-router batch results {batch_id} --errors" in status.stderr
    every = cli(env, "batch", "results", batch_id)
    assert [json.loads(x)["custom_id"] for x in every.stdout.splitlines()] == [f"r{i}" for i in range(40)]
    assert cli(env, "batch", "cancel", batch_id).returncode == 1  # already ended
    assert batch_id in cli(env, "batch", "list").stdout
    for verb in ("status", "results", "cancel"):  # no such id
        assert cli(env, "batch", verb, "batch_" + "0" * 32).returncode == 4


def test_cli_prompts_csv_with_a_template_and_cancel(env, batch_settings, sim, workers, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('id,text\na1,"the first, with a comma"\n,second\na3,third\n')
    out = tmp_path / "out.jsonl"
    args = [
        "--prompts",
        str(prompts),
        "--template",
        "Summarise: {text}",
        "--model",
        "gpt-4o-mini",
        "--max-tokens",
        "50",
    ]
    worker = workers(batch_settings)
    done = cli(env, "batch", "submit", *args, "--wait", "-o", str(out))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["a1", "2", "a3"]
    assert lines[0]["response"]["body"]["choices"][0]["message"]["content"] == (
        "[gpt-4o-mini] You said: Summarise: the first, with a comma"
    )
    bad = cli(env, "batch", "submit", *args[:2], "--template", "{body}", "--model", "gpt-4o-mini")
    assert bad.returncode == 2 and "names body, not a column" in bad.stderr

    # no worker: the cancel itself ends every waiting line, so it cannot lose a race with them
    # (cancelling with lines running: tests/e2e/test_batch_ends.py)
    worker.stop()
    big = tmp_path / "many.txt"
    big.write_text("".join(f"prompt {i}\n" for i in range(200)))
    batch_id = cli(env, "batch", "submit", "--prompts", str(big), "--model", "gpt-4.1").stdout.strip()
    cancelled = cli(env, "batch", "cancel", batch_id)
    assert cancelled.returncode == 0 and cancelled.stdout.split() == [batch_id, "cancelled"]
    follow = cli(env, "batch", "status", batch_id, "--follow")
    assert follow.returncode == 1 and " cancelled " in follow.stdout and "cancelled)" in follow.stdout


def test_cli_refusal_prints_every_bad_line_and_exits_2(env, redis_url, tmp_path):
    from redis import Redis

    requests = tmp_path / "bad.jsonl"
    requests.write_text(json.dumps(line(1)) + "\n{oops\n" + json.dumps(line(1, temperature=5)) + "\n")
    out = cli(env, "batch", "submit", str(requests))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "line 2 (invalid_json): the line is not valid JSON" in out.stderr
    assert "line 3 (custom_id): custom_id 'r1' is already used on line 1" in out.stderr
    assert "Nothing was enqueued" in out.stderr and Redis.from_url(redis_url).keys("*") == []
    skipped = cli(env, "batch", "submit", str(requests), "--skip-invalid")
    assert skipped.returncode == 0 and "skipped line 2" in skipped.stderr
