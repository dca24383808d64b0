"""Webhooks against a real receiver (an HTTP server on a free port), real Redis and real workers
(in-process, and `llm-router worker` processes): signatures verified with the docs' recipe,
a receiver failing twice then answering, one never answering, the allow-list at enqueue (Python,
CLI, HTTP), a batch's record when it ends, a worker killed between tries, and no secret in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from pydantic import SecretStr
from redis.asyncio import Redis

from harness.processes import llm_router, settings_env
from harness.wait import wait_until, wait_until_async
from producers import JobRejected, Producer
from producers.batches import BatchRejected
from producers.http.app import create_app
from tests.helpers import sim_admin
from worker.contract.keys import WEBHOOKS, result_key
from worker.contract.settings import ConfigError, Settings, load_settings
from worker.observe import metrics as m
from worker.outputs import callbacks
from worker.process.service import create_worker

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-test-7f3a9c0e1b2d4f6a8c0e"
TOKEN = "tok-hooks"


def readme_verify() -> Any:
    """The docs' verification recipe (docs/webhooks.md), run as written."""
    page = (ROOT / "docs" / "webhooks.md").read_text()
    [block] = [b for b in re.findall(r"^```python\n(.*?)^```", page, re.M | re.S) if "def verify(" in b]
    namespace: dict[str, Any] = {}
    exec(block, namespace)
    return namespace["verify"]


class Receiver:
    """An HTTP server recording every POST (time, headers, raw body) and answering the statuses
    of `answers` in turn, then `default`."""

    def __init__(self, answers: list[int | tuple[int, dict[str, str]]] | None = None, default: int = 200) -> None:
        self.answers = list(answers or [])
        self.default = default
        self.got: list[tuple[float, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.got.append((time.monotonic(), dict(self.headers), body))
                answer = receiver.answers.pop(0) if receiver.answers else receiver.default
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in {"Content-Length": "0", **headers}.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(answers: list[int | tuple[int, dict[str, str]]] | None = None, default: int = 200) -> Receiver:
        made.append(Receiver(answers, default))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def hooks(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_secret": SecretStr(SECRET),
            "webhook_allowed_hosts": ["127.0.0.1"],
            # the receivers run on loopback, refused unless allowed (test_loopback_and_private_...)
            "webhook_allowed_networks": ["127.0.0.0/8"],
            "webhook_max_tries": 3,
            "webhook_backoff_base_s": 0.2,
            "webhook_backoff_cap_s": 1.0,
            "webhook_timeout_s": 2.0,
            "ingress_tokens": {TOKEN: "hooks"},
        }
    )


@contextlib.asynccontextmanager
async def producer_of(settings: Settings) -> AsyncIterator[Producer]:
    async with Producer(settings=settings) as producer:
        yield producer


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[None]:
    """A worker in this process, as in production (not burst): its webhook sender runs beside it."""
    worker = create_worker(settings, handle_signals=False)
    task = asyncio.create_task(worker.main())
    try:
        yield
    finally:
        await worker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def delivered(producer: Producer, job_id: str, status: str = "delivered", timeout: float = 20) -> Any:
    async def ended() -> Any:
        found = await producer.webhook(job_id)
        return found if found and found.status == status else None

    return await wait_until_async(ended, timeout, f"the webhook of {job_id} to be {status}")


def counts() -> dict[str, float]:
    return {o: m.WEBHOOK_DELIVERIES.labels(o)._value.get() for o in m.WEBHOOK_OUTCOMES}


async def test_delivery_is_signed_and_verifies_with_the_readme_recipe(hooks, receiver, redis):
    verify = readme_verify()
    hook = receiver()
    before = counts()
    async with producer_of(hooks) as producer, running_worker(hooks):
        job_id = await producer.chat("gpt-4.1", "Hello hooks", callback_url=hook.url)
        delivery = await delivered(producer, job_id)
        stored = await redis.get(result_key(job_id))
    assert len(hook.got) == 1 and delivery.tries == 1 and delivery.last_status == 200
    _, headers, body = hook.got[0]
    signature = headers["LLM-Router-Signature"]
    assert verify(SECRET, body, signature)
    assert not verify("another-secret", body, signature)
    assert not verify(SECRET, body.replace(b"Hello hooks", b"Hello hookz"), signature)
    stale = re.sub(r"t=\d+", f"t={int(time.time()) - 3600}", signature)
    assert not verify(SECRET, body, stale)  # an old timestamp (its signature does not match either)
    event = orjson.loads(body)
    assert event["id"] == headers["LLM-Router-Delivery"] == delivery.id == f"job:{job_id}#1"
    assert event["type"] == headers["LLM-Router-Event"] == "job.succeeded"
    assert event["data"] == orjson.loads(stored)  # the result record, as stored
    assert "[gpt-4.1] You said: Hello hooks" in event["data"]["content"]
    assert counts()["delivered"] - before["delivered"] == 1


async def test_receiver_failing_twice_then_answering_gets_three_tries_with_backoff(hooks, receiver, redis):
    hook = receiver([500, 503])
    before = counts()
    async with producer_of(hooks) as producer, running_worker(hooks):
        job_id = await producer.chat("gpt-4.1", "Third time lucky", callback_url=hook.url)
        delivery = await delivered(producer, job_id)
    assert delivery.tries == 3 and delivery.last_status == 200
    assert delivery.last_error == "the receiver answered HTTP 503"  # the last failed try's
    assert len(hook.got) == 3
    times = [t for t, _, _ in hook.got]
    # backoff from 0.2 s, doubling, ±25 % jitter
    assert times[1] - times[0] >= 0.2 * 0.75 and times[2] - times[1] >= 0.4 * 0.75
    assert len({h["LLM-Router-Delivery"] for _, h, _ in hook.got}) == 1  # one id: the receiver dedupes on it
    assert len({body for _, _, body in hook.got}) == 1  # the same body on every try
    after = counts()
    assert (after["retried"] - before["retried"], after["delivered"] - before["delivered"]) == (2, 1)
    assert await redis.zcard(WEBHOOKS) == 0


async def test_a_receivers_retry_after_is_honoured(hooks, receiver):
    hook = receiver([(429, {"Retry-After": "1"})])
    async with producer_of(hooks) as producer, running_worker(hooks):
        job_id = await producer.chat("gpt-4.1", "Slow down", callback_url=hook.url)
        delivery = await delivered(producer, job_id)
    assert delivery.tries == 2 and len(hook.got) == 2
    assert hook.got[1][0] - hook.got[0][0] >= 1.0  # not the 0.2 s backoff: the receiver asked for 1 s


async def test_receiver_never_answering_is_recorded_failed_and_the_result_kept(hooks, receiver, redis):
    hook = receiver(default=500)
    before = counts()
    async with producer_of(hooks) as producer, running_worker(hooks):
        job_id = await producer.chat("gpt-4.1", "Nobody home", callback_url=hook.url)
        result = await producer.wait(job_id, 20)
        delivery = await delivered(producer, job_id, "failed")
        # the outbox is empty: no fourth try is coming
        assert await redis.zcard(WEBHOOKS) == 0
        assert (await producer.result(job_id)) == result
    assert len(hook.got) == hooks.webhook_max_tries == delivery.tries == 3
    assert delivery.last_status == 500 and "HTTP 500" in (delivery.last_error or "")
    assert "WEBHOOK_MAX_TRIES" in (delivery.last_error or "")
    assert result.status == "succeeded" and result.content
    after = counts()
    assert (after["retried"] - before["retried"], after["failed"] - before["failed"]) == (2, 1)


async def test_a_replayed_job_sends_its_new_result_as_a_new_delivery(hooks, receiver, sim):
    """A failed job's webhook carries the failure; replayed from the dead letters, its new result
    is a new delivery (generation 2: a new id, so the receiver does not drop it as a duplicate)."""
    hook = receiver()
    sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": True})
    async with producer_of(hooks) as producer, running_worker(hooks):
        job_id = await producer.chat("gpt-4.1", "Again", callback_url=hook.url, fallbacks=[])
        first = await delivered(producer, job_id)
        sim_admin(sim, "/_sim/config", {"model": "gpt-4.1", "down": False})
        assert await producer.dead_letters.replay(job_id)
        await wait_until_async(lambda: len(hook.got) == 2, 20, "the replayed job's delivery")
        second = await delivered(producer, job_id)
    events = [orjson.loads(body) for _, _, body in hook.got]
    assert [e["type"] for e in events] == ["job.failed", "job.succeeded"]
    assert (first.id, second.id) == (f"job:{job_id}#1", f"job:{job_id}#2") == tuple(e["id"] for e in events)
    assert second.tries == 1


def test_allow_list_entries():
    hosts = ["Hooks.Example.com", "*.example.org", "10.0.0.7:8443", "[::1]:9000"]
    for url, ok in [
        ("https://hooks.example.com/x", True),
        ("https://HOOKS.example.com:444/x", True),  # a bare host: any port
        ("https://a.b.example.org/", True),
        ("https://example.org/", False),  # *.domain: its subdomains only
        ("https://evilexample.org/", False),
        ("https://hooks.example.com.evil.io/", False),
        ("https://10.0.0.7:8443/", True),
        ("https://10.0.0.7/", False),  # host:port: that port only
        ("http://[::1]:9000/", True),
        ("http://[::1]:9001/", False),
        ("https://10.0.0.7:8443@evil.io/", False),
    ]:
        assert callbacks.allowed(url, hosts) is ok, url
    for entry in ("hooks.example.com/path", "user@hooks.example.com", "host:99999", " spaced"):
        with pytest.raises(ConfigError, match=f"WEBHOOK_ALLOWED_HOSTS: {entry!r} is not a host name"):
            load_settings(_env_file=None, webhook_allowed_hosts=[entry], webhook_secret=SecretStr(SECRET))


async def test_a_worker_refuses_a_host_its_own_list_lacks(hooks, receiver, redis):
    """A job written by another producer (or under another allow-list) is run; its webhook is not sent."""
    hook = receiver()
    async with producer_of(hooks) as producer:
        job_id = await producer.chat("gpt-4.1", "Hi", callback_url=hook.url)
    strict = hooks.model_copy(update={"webhook_allowed_hosts": ["hooks.example.com"]})
    async with producer_of(strict) as producer, running_worker(strict):
        delivery = await delivered(producer, job_id, "failed")
        result = await producer.result(job_id)
        assert result is not None and result.status == "succeeded"
    assert hook.got == [] and delivery.tries == 1
    assert "WEBHOOK_ALLOWED_HOSTS" in (delivery.last_error or "")


async def test_batch_callback_gets_the_batch_record_when_it_ends(hooks, receiver, redis):
    verify = readme_verify()
    hook = receiver()
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(3)
    ]
    async with producer_of(hooks) as producer, running_worker(hooks):
        batch = await producer.batches.submit(lines, callback_url=hook.url)
        assert batch.callback_url == hook.url
        await producer.batches.wait(batch.id, timeout=30, poll_s=0.1)

        async def sent() -> Any:
            found = await producer.batches.webhook(batch.id)
            return found if found and found.status == "delivered" else None

        delivery = await wait_until_async(sent, 20, "the batch's webhook")
        record = await producer.batches.get(batch.id)
    assert len(hook.got) == 1 and delivery.id == f"batch:{batch.id}#1"
    _, headers, body = hook.got[0]
    assert verify(SECRET, body, headers["LLM-Router-Signature"])
    event = orjson.loads(body)
    assert event["type"] == "batch.completed"
    assert record is not None and event["data"] == record.model_dump(mode="json")
    assert event["data"]["request_counts"]["completed"] == 3


async def test_callback_urls_outside_the_allow_list_are_refused_at_enqueue(hooks, redis, tmp_path):
    evil = "https://evil.example.com/steal"
    async with producer_of(hooks) as producer:
        with pytest.raises(JobRejected) as refused:
            await producer.chat("gpt-4.1", "Hi", callback_url=evil)
        assert refused.value.field == "callback_url" and "WEBHOOK_ALLOWED_HOSTS" in refused.value.message
        for bad, words in (
            ("ftp://127.0.0.1/x", "https://"),
            ("https://user:pw@127.0.0.1/x", "user or password"),
            ("https://127.0.0.1/" + "x" * 2048, "over 2048"),
        ):
            with pytest.raises(JobRejected) as refused:
                await producer.chat("gpt-4.1", "Hi", callback_url=bad)
            assert refused.value.field == "callback_url" and words in refused.value.message
        line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}
        body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "q"}]}
        with pytest.raises(BatchRejected) as batch_refused:
            await producer.batches.submit([{**line, "body": body}], callback_url=evil)
        assert batch_refused.value.errors[0].param == "callback_url"
        with pytest.raises(BatchRejected) as batch_refused:  # a line has none of its own
            await producer.batches.submit([{**line, "body": {**body, "callback_url": "http://127.0.0.1/x"}}])
        assert batch_refused.value.errors[0].param == "body.callback_url"
        off = hooks.model_copy(update={"webhook_allowed_hosts": []})
        with pytest.raises(JobRejected) as refused:
            async with producer_of(off) as webhooks_off:
                await webhooks_off.chat("gpt-4.1", "Hi", callback_url="http://127.0.0.1/x")
        assert "webhooks are off" in refused.value.message
    assert await redis.zcard(hooks.queue_name) == 0 and await redis.dbsize() == 0  # nothing written

    env = {**settings_env(hooks), "PATH": str(Path(llm_router()).parent)}
    chat = subprocess.run(
        [llm_router(), "chat", "--model", "gpt-4.1", "--message", "Hi", "--callback-url", evil],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert chat.returncode == 2 and "--callback-url" in chat.stderr and "WEBHOOK_ALLOWED_HOSTS" in chat.stderr
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({**line, "body": body}) + "\n")
    submit = subprocess.run(
        [llm_router(), "batch", "submit", str(requests), "--callback-url", evil],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submit.returncode == 2 and "WEBHOOK_ALLOWED_HOSTS" in submit.stderr
    # one line naming the flag and the fix: not "1 bad of 0 lines", nor --skip-invalid (which cannot help)
    assert submit.stderr.startswith("llm-router: invalid --callback-url (callback_url): host")
    assert "bad of" not in submit.stderr and "--skip-invalid" not in submit.stderr

    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(hooks), headers=auth) as client:
        job = {
            "kind": "chat",
            "model": "gpt-4.1",
            "messages": [{"role": "user", "content": "Hi"}],
            "callback_url": evil,
        }
        answer = client.post("/v1/jobs", json=job)
        assert answer.status_code == 422
        error = answer.json()["error"]
        assert error["param"] == "callback_url" and "WEBHOOK_ALLOWED_HOSTS" in error["message"]
        uploaded = client.post(
            "/v1/files", files={"file": ("in.jsonl", requests.read_bytes())}, data={"purpose": "batch"}
        )
        answer = client.post(
            "/v1/batches",
            json={"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions", "callback_url": evil},
        )
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "callback_url"
    assert await redis.zcard(hooks.queue_name) == 0


def test_http_job_webhook_survives_a_worker_killed_between_tries(hooks, receiver, redis_url, workers, tmp_path):
    """Through `llm-router worker` processes and the ingress: the first try fails, the worker is
    SIGKILLed before the second, another worker sends it; GET /v1/jobs/{id} shows the delivery."""
    verify = readme_verify()
    hook = receiver([500])
    slow = hooks.model_copy(update={"webhook_backoff_base_s": 3.0, "webhook_backoff_cap_s": 3.0})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    first = workers(slow)
    with TestClient(create_app(slow), headers=auth) as client:
        job = {
            "kind": "chat",
            "model": "gpt-4.1",
            "messages": [{"role": "user", "content": "over HTTP"}],
            "callback_url": hook.url,
        }
        answer = client.post("/v1/jobs", json=job, headers={"Idempotency-Key": "hooked-1"})
        assert answer.status_code == 202
        job_id = answer.json()["id"]

        def webhook() -> dict[str, Any]:
            return client.get(f"/v1/jobs/{job_id}").json().get("webhook") or {}

        wait_until(lambda: webhook().get("tries") == 1, 30, "the first try's outcome")
        first.stop()  # SIGKILL: the retry is due in ~3 s, only in Redis now
        assert webhook()["status"] == "pending" and webhook()["last_status"] == 500
        restarted_at = time.monotonic()
        workers(slow)
        wait_until(lambda: webhook().get("status") == "delivered", 30, "the second try, by the new worker")
        record = client.get(f"/v1/jobs/{job_id}").json()
    assert record["status"] == "succeeded" and record["webhook"]["tries"] == 2
    assert len(hook.got) == 2 and hook.got[1][0] > restarted_at
    _, headers, body = hook.got[1]
    assert verify(SECRET, body, headers["LLM-Router-Signature"])
    assert orjson.loads(body)["data"]["job_id"] == job_id
    logs = [p.read_text(errors="replace") for p in tmp_path.glob("*.log")]
    assert len(logs) == 2 and all(SECRET not in log for log in logs)  # nor in the workers' logs


async def test_the_secret_never_reaches_redis(hooks, receiver, redis):
    hook = receiver([500])
    lines = [
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": "q"}]},
        }
    ]
    async with producer_of(hooks) as producer, running_worker(hooks):
        job_id = await producer.chat("gpt-4.1", "Hi", callback_url=hook.url)
        batch = await producer.batches.submit(lines, callback_url=hook.url)
        await delivered(producer, job_id)

        async def batch_delivery() -> Any:
            return await producer.batches.webhook(batch.id)

        await wait_until_async(batch_delivery, 20, "the batch's delivery")
    secret = SECRET.encode()
    seen = 0
    sync = Redis.from_url(hooks.redis_url)
    async for key in sync.scan_iter(count=1000):
        seen += 1
        assert secret not in key
        kind = (await sync.type(key)).decode()
        values: list[bytes] = []
        if kind == "string":
            values = [await sync.get(key)]
        elif kind == "hash":
            values = [x for pair in (await sync.hgetall(key)).items() for x in pair]
        elif kind == "list":
            values = await sync.lrange(key, 0, -1)
        elif kind == "zset":
            values = await sync.zrange(key, 0, -1)
        elif kind == "set":
            values = list(await sync.smembers(key))
        elif kind == "stream":  # (the recent jobs': ids, statuses, models, costs, sources)
            values = [x for _, entry in await sync.xrange(key) for pair in entry.items() for x in pair]
        else:
            pytest.fail(f"{key!r}: a {kind} (check it too)")
        assert all(secret not in v for v in values if v), key
    await sync.aclose()
    assert seen > 5
    assert SECRET not in generate_latest().decode()  # nor in the metrics


def test_a_worker_with_an_allow_list_and_no_secret_does_not_start(hooks, tmp_path):
    env = {**settings_env(hooks), "WEBHOOK_SECRET": ""}
    out = subprocess.run([llm_router(), "worker", "--burst"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "WEBHOOK_SECRET" in out.stderr


async def test_a_result_saved_again_after_a_lost_answer_queues_one_delivery(redis, settings):
    # The result and the job's release go out in one pipeline (Lease.save_result); if its answers
    # are lost the worker's client sends it again (worker.contract.connections): the webhook is queued once.
    from datetime import UTC, datetime

    from redis.asyncio import Redis as AsyncRedis

    from harness.reply_cutter import ReplyCutter
    from worker.contract.connections import arq_settings
    from worker.contract.keys import job_key, webhook_key
    from worker.contract.models import JobResult
    from worker.contract.store import ResultStore
    from worker.process.lease import Lease

    cutter = ReplyCutter(settings.redis_url)
    url = await cutter.start()
    rs = arq_settings(url)
    client = AsyncRedis.from_url(url, retry=rs.retry, retry_on_error=rs.retry_on_error)
    try:
        store, lease = ResultStore(client, 60), Lease(client, settings.queue_name, 5)
        await redis.set(job_key("j1"), b"record")
        await redis.zadd(settings.queue_name, {"j1": 1})
        cutter.marker = store._save.sha.encode()
        now = datetime.now(UTC)
        result = JobResult(job_id="j1", status="succeeded", runs=1, started_at=now, finished_at=now, content="hi")
        await lease.save_result(store, result, callback_url="https://hooks.example.com/x")
        assert cutter.cuts == 1
        assert await redis.exists(result_key("j1")) and not await redis.zscore(settings.queue_name, "j1")
        assert await redis.zrange(WEBHOOKS, 0, -1) == [b"job:j1"]
        assert await redis.hget(webhook_key("job:j1"), "n") == b"1"
    finally:
        await client.aclose()
        cutter.server.close()


async def queue_raw(redis: Redis, job_id: str, url: str, result: bytes | None = None) -> None:
    """A job's result and its pending delivery as another writer (or a producer of an older
    version) leaves them: through the outbox's own Lua, with no check of the URL."""
    from worker.contract.keys import webhook_key
    from worker.lua import registry as lua

    record = {"job_id": job_id, "status": "succeeded", "content": "hi", "runs": 1}
    await redis.set(result_key(job_id), orjson.dumps(record) if result is None else result)
    call = "queue_delivery(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])"
    queue = redis.register_script(lua.join("outbox_queue_delivery") + call)
    await queue(keys=[WEBHOOKS, webhook_key(f"job:{job_id}")], args=[f"job:{job_id}", url, time.time(), 600])


async def test_a_callback_url_with_a_tab_is_refused_and_a_stored_one_fails_once(hooks, receiver, redis):
    """urllib drops a tab in the host (the host checked was 127.0.0.1) where httpx refuses the
    URL: it was accepted, stored as given, and its delivery looped with a traceback each time."""
    hook = receiver()
    tabbed = hook.url.replace("127.0.0.1", "127.0.0\t.1")
    async with producer_of(hooks) as producer:
        for bad in (tabbed, hook.url + "\n", hook.url.replace("/hooks", "/ho oks")):
            with pytest.raises(JobRejected) as refused:
                await producer.chat("gpt-4.1", "Hi", callback_url=bad)
            assert refused.value.field == "callback_url" and "control character" in refused.value.message
        with pytest.raises(BatchRejected) as batch_refused:
            body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "q"}]}
            line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
            await producer.batches.submit([line], callback_url=tabbed)
        assert batch_refused.value.errors[0].param == "callback_url"
        assert await redis.dbsize() == 0
        await queue_raw(redis, "tabbed", tabbed)
        async with running_worker(hooks):
            delivery = await delivered(producer, "tabbed", "failed")
    assert delivery.tries == 1 and "not a URL" in (delivery.last_error or "") and hook.got == []
    assert await redis.zcard(WEBHOOKS) == 0


async def test_a_try_that_fails_inside_the_worker_counts_and_is_recorded(hooks, receiver, redis):
    """A record the sender cannot read (not JSON): each try ends with its outcome, retried, then
    `failed` at WEBHOOK_MAX_TRIES; before, nothing was written and it was claimed forever."""
    hook = receiver()
    await queue_raw(redis, "unreadable", hook.url, result=b"{not json")
    async with producer_of(hooks) as producer, running_worker(hooks):
        delivery = await delivered(producer, "unreadable", "failed")
        assert await redis.zcard(WEBHOOKS) == 0
    assert delivery.tries == hooks.webhook_max_tries and hook.got == []
    error = delivery.last_error or ""
    assert "inside the worker" in error and "JSONDecodeError" in error and "WEBHOOK_MAX_TRIES" in error


async def test_loopback_and_private_addresses_are_refused_unless_allowed(hooks, receiver, redis):
    """Hosts on the allow-list whose addresses are not public: an IP literal is refused at enqueue,
    a name (`localhost`) when the worker resolves it; a record another writer left naming one is
    not called either. WEBHOOK_ALLOWED_NETWORKS allows them (every other test here allows loopback)."""
    hook = receiver()
    port = hook.server.server_address[1]
    strict = hooks.model_copy(
        update={
            "webhook_allowed_networks": [],
            "webhook_allowed_hosts": ["127.0.0.1", "localhost", "0.0.0.0", "[::ffff:127.0.0.1]", "10.255.255.1"],
        }
    )
    async with producer_of(strict) as producer:
        with pytest.raises(JobRejected) as refused:
            await producer.chat("gpt-4.1", "Hi", callback_url=hook.url)
        assert refused.value.field == "callback_url"
        assert "'127.0.0.1' is a loopback address" in refused.value.message
        assert "WEBHOOK_ALLOWED_NETWORKS" in refused.value.message
        named = await producer.chat("gpt-4.1", "Hi", callback_url=f"http://localhost:{port}/hooks")
        written = {
            "zeros": f"http://0.0.0.0:{port}/hooks",  # Linux connects it to this machine
            "mapped": f"http://[::ffff:127.0.0.1]:{port}/hooks",
            "private": "http://10.255.255.1:9/hooks",
        }
        for job_id, url in written.items():
            await queue_raw(redis, job_id, url)
        async with running_worker(strict):
            ended = {j: await delivered(producer, j, "failed") for j in [named, *written]}
    assert hook.got == []
    for job_id, delivery in ended.items():
        assert delivery.tries == 1 and "WEBHOOK_ALLOWED_NETWORKS" in (delivery.last_error or ""), job_id
    assert "localhost resolves to 127.0.0.1, a loopback address" in (ended[named].last_error or "")
    assert "0.0.0.0 is an unspecified address" in (ended["zeros"].last_error or "")
    assert "a loopback address (in ::ffff:7f00:1)" in (ended["mapped"].last_error or "")
    assert "10.255.255.1 is a private address" in (ended["private"].last_error or "")

    allowed = strict.model_copy(update={"webhook_allowed_networks": ["127.0.0.0/8"]})
    async with producer_of(allowed) as producer, running_worker(allowed):
        job_id = await producer.chat("gpt-4.1", "Hi", callback_url=f"http://localhost:{port}/hooks")
        assert (await delivered(producer, job_id)).tries == 1
    assert len(hook.got) == 1 and hook.got[0][1]["Host"] == f"localhost:{port}"
