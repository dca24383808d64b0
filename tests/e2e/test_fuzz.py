"""Hundreds of randomly malformed records among valid jobs, through two real worker processes:
both stay up, every valid job succeeds, and every malformed record is accounted for (a failed
result with its dead letter, or a quarantine entry); none stays queued or vanishes."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

from harness.processes import WorkerProcess
from harness.wait import wait_until_async
from producers import ChatJob, Producer
from worker.contract.keys import DLQ, QUARANTINE, result_key

GOOD = {"kind": "chat", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
# A field of the payload and values it may not take: wrong types, out of range, unsafe, huge.
BAD_FIELDS: dict[str, list[Any]] = {
    "model": [7, "", "bad model!", "x" * 300, None, "gpt\x00nul", "gpt-4o\nINFO forged log line", ["gpt-4o"]],
    "messages": [
        "hi",
        [],
        [{}],
        [{"role": "robot", "content": "x"}],
        [{"role": "user", "content": ""}],
        [{"role": "user"}],
        [{"role": "user", "content": 5}],
        None,
    ],
    "temperature": ["0.5", True, 5, -1, [], {}],
    "max_tokens": [True, "5", 0, 10**12, 1.5, -3, 2**70],
    "top_p": [2, "x", False],
    "stream": ["yes", 1, None],
    "tools": ["x", {}, [1]],
    "source": ["bad source!", 5, "x" * 100],
    "fallbacks": ["gpt-4o", [1], ["bad model!"]],
    "max_wait_s": [-1, "1", True],
    "stop": [5, [1], {}],
    "bogus": [1, "x"],
    "kind": ["vision", 3],
}
# The arq record's own fields, wrong.
BAD_RECORD: dict[str, list[Any]] = {
    "f": [None, 7, "chatt", "invalid", ["chat"], {"x": 1}],
    "a": [None, "x", [], [GOOD, GOOD], ["job"], [[GOOD]], {"0": GOOD}],
    "k": ["x", [1], {"x": 1}, 5],
    "t": ["x", -1, 10**12, 1.5, True, [1]],
    "et": ["soon", -5, 1.5, [1]],
}


def malformed(rng: random.Random) -> tuple[str, bytes | None]:
    """(why it is wrong, the record's bytes, or None for an id queued without a record)."""
    choice = rng.randrange(100)
    if choice < 8:
        return "bytes", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))) + b"\xff"
    if choice < 14:
        return "not an object", json.dumps(rng.choice([[1, 2], 3, "chat", None, True, []])).encode()
    if choice < 40:
        field = rng.choice(list(BAD_RECORD))
        record: dict[str, Any] = {"f": "chat", "a": [GOOD]}
        if rng.random() < 0.2:
            record.pop(field, None)
            record["f" if field == "f" else "a"] = None if field in ("f", "a") else record.get(field)
        else:
            record[field] = rng.choice(BAD_RECORD[field])
        return f"record {field}", json.dumps(record).encode()
    if choice < 94:
        field = rng.choice(list(BAD_FIELDS))
        return f"payload {field}", json.dumps(
            {"f": "chat", "a": [GOOD | {field: rng.choice(BAD_FIELDS[field])}]}
        ).encode()
    if choice < 96:
        huge = GOOD | {"messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
        return "huge", json.dumps({"f": "chat", "a": [huge]}).encode()
    return "orphan", None


def bad_id(rng: random.Random, i: int) -> bytes:
    """Mostly a usable id; sometimes not UTF-8, or outside the charset."""
    roll = rng.random()
    if roll < 0.05:
        return b"\xfe\xff" + str(i).encode()
    if roll < 0.1:
        return rng.choice([f"has space {i}", f"new\nline {i}", f"{'x' * 200}{i}", f"tab\t{i}"]).encode()
    return f"bad-{i}".encode()


async def test_random_malformed_records_all_end_somewhere(settings, sim, tmp_path):
    rng = random.Random(20261125)
    s = settings.model_copy(update={"worker_concurrency": 20})
    workers = [WorkerProcess(s, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        async with Producer(s.redis_url, queue_name=s.queue_name) as producer:
            redis = producer.redis
            bad: dict[bytes, str] = {}
            for i in range(300):
                raw_id, (why, record) = bad_id(rng, i), malformed(rng)
                bad[raw_id] = why
                if record is not None:
                    await redis.set(b"arq:job:" + raw_id, record)
                await redis.zadd(s.queue_name, {raw_id: 1})
            valid = await producer.enqueue_many(
                [ChatJob(model="gpt-4o-mini", messages=[{"role": "user", "content": f"valid {i}"}]) for i in range(60)]
            )

            async def settled() -> bool:
                done = await redis.exists(*(result_key(i) for i in valid))
                return done == len(valid) and await redis.zcard(s.queue_name) == 0

            await wait_until_async(settled, 60, lambda: f"the queue to drain: {workers[0].log()[-2000:]}")
            assert all(w.proc.poll() is None for w in workers), "a worker died"
            results = [await producer.result(i) for i in valid]
            assert all(r.status == "succeeded" for r in results)

            quarantined = {base64.b64decode(json.loads(e)["id_base64"]) for e in await redis.lrange(QUARANTINE, 0, -1)}
            unaccounted: list[tuple[bytes, str]] = []
            for raw_id, why in bad.items():
                if raw_id in quarantined:
                    continue
                result, dead = await redis.get(b"llm-router:result:" + raw_id), await redis.hexists(DLQ, raw_id)
                if result is None or json.loads(result)["error"]["type"] != "invalid_job" or not dead:
                    unaccounted.append((raw_id, why))
            assert not unaccounted, unaccounted[:10]
            assert len(quarantined) == sum(1 for i in bad if not i.startswith(b"bad-"))
    finally:
        for w in workers:
            w.stop()
    logs = "".join(w.log() for w in workers)
    assert "\nINFO forged" not in logs and "Traceback" not in logs
