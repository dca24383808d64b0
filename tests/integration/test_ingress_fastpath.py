"""`POST /v1/jobs` and `POST /v1/chat/completions` by producers.http.fastpath answer exactly what
the FastAPI routes answer.

The same requests go to the app as served (fast path) and to the app without it (every request
through FastAPI's route, the reference), each against a flushed real Redis: statuses, bodies and
headers must match, and the request metrics must count the fast path under the route's template.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from producers.http.app import create_app
from producers.http.fastpath import JobsFastPath
from worker.contract.models import ErrorInfo, JobResult
from worker.contract.settings import Settings
from worker.contract.store import ResultStore

TOKENS = {"tok-a": "team-a", "tok-b": "team-b"}
JOB = {"kind": "chat", "model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}
AUTH = {"Authorization": "Bearer tok-a"}

# (headers, body): every way POST /v1/jobs answers that needs no worker
REQUESTS: list[tuple[dict[str, str], Any]] = [
    (AUTH | {"Idempotency-Key": "k1"}, JOB),  # 202 queued
    (AUTH | {"Idempotency-Key": "k1"}, JOB),  # 202 the same job again
    (AUTH | {"Idempotency-Key": "k1"}, {**JOB, "temperature": 1}),  # 409
    (AUTH | {"Idempotency-Key": "bad key!"}, JOB),  # 422 naming the header
    ({"Authorization": "Bearer tok-a", "Idempotency-Key": "k2"}, {**JOB, "job_id": 7}),  # 422 job_id
    (AUTH, {**JOB, "kind": "essay"}),  # 422 kind
    (AUTH, {**JOB, "temperature": 5}),  # 422 temperature
    (AUTH, {**JOB, "source": "team-b"}),  # 422 source
    (AUTH, b"{not json"),  # 400
    (AUTH, b"[1, 2]"),  # 400
    ({"Authorization": "Bearer wrong"}, JOB),  # 401
    ({"Authorization": "Basic tok-a"}, JOB),  # 401
    ({}, JOB),  # 401
    ({"Authorization": "bearer tok-a"}, {**JOB, "job_id": "team-a@k4"}),  # 202
    (AUTH, {"kind": "chat", "model": "gpt-4.1", "messages": [{"role": "user", "content": "x" * 70_000}]}),  # 413
]


def without_fast_path(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not JobsFastPath]
    return app


def answers(app: FastAPI, redis_url: str) -> list[tuple[int, bytes, dict[str, str]]]:
    Redis.from_url(redis_url).flushdb()
    got = []
    with TestClient(app) as client:
        for headers, body in REQUESTS:
            sent = client.post(
                "/v1/jobs", headers=headers, **({"content": body} if isinstance(body, bytes) else {"json": body})
            )
            got.append((sent.status_code, sent.content, dict(sent.headers)))
        metrics = client.get("/metrics").text
    assert 'llm_router_http_requests_total{method="POST",route="/v1/jobs",status_class="2xx"}' in metrics
    return got


def test_fast_path_answers_as_the_route_does(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, ingress_tokens=TOKENS, ingress_max_body_bytes=65536, _env_file=None)
    fast = create_app(settings)
    assert any(m.cls is JobsFastPath for m in fast.user_middleware)
    served, reference = answers(fast, redis_url), answers(without_fast_path(create_app(settings)), redis_url)
    assert [s for s, _, _ in served] == [202, 202, 409, 422, 422, 422, 422, 422, 400, 400, 401, 401, 401, 202, 413]
    assert served == reference
    assert b'"param":"idempotency-key"' in served[3][1] and b'"param":"kind"' in served[5][1]


def test_fast_path_answers_redis_down_as_the_route_does(redis_url: str) -> None:
    down = "redis://127.0.0.1:1/0"  # nothing listens there
    settings = Settings(redis_url=down, ingress_tokens=TOKENS, _env_file=None)
    for app in (create_app(settings), without_fast_path(create_app(settings))):
        with TestClient(app) as client:
            failed = client.post("/v1/jobs", json=JOB, headers=AUTH)
            assert failed.status_code == 503 and failed.json()["error"]["code"] == "unavailable"


CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hello"}]}
# (headers, body): every way POST /v1/chat/completions answers that needs no worker (INGRESS_WAIT_S
# passes: 202); `done` and `fail` have results stored before the first request
CHAT_REQUESTS: list[tuple[dict[str, str], Any]] = [
    (AUTH | {"Idempotency-Key": "c1"}, CHAT),  # 202 queued, past the wait
    (AUTH | {"Idempotency-Key": "c1"}, {**CHAT, "temperature": 1}),  # 409
    (AUTH | {"Idempotency-Key": "done"}, CHAT),  # 200 the stored completion
    (AUTH | {"Idempotency-Key": "fail"}, CHAT),  # its error, in OpenAI's shape
    (AUTH | {"Idempotency-Key": "bad key!"}, CHAT),  # 422 naming the header
    (AUTH, {**CHAT, "temperature": 5}),  # 422 temperature
    (AUTH, {"messages": CHAT["messages"]}),  # 422 model
    (AUTH, b"{not json"),  # 400
    ({"Authorization": "Bearer wrong"}, CHAT),  # 401
    ({}, CHAT),  # 401
    (AUTH, {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x" * 70_000}]}),  # 413
]


async def stored(redis_url: str) -> None:
    """The results of `done` and `fail`."""
    redis = AsyncRedis.from_url(redis_url)
    store, finished = ResultStore(redis, 60), datetime(2026, 1, 1, tzinfo=UTC)
    await store.save(JobResult(job_id="team-a@done", status="succeeded", content="hi", finished_at=finished))
    error = ErrorInfo(type="upstream_error", message="the gateway failed", status=503)
    await store.save(JobResult(job_id="team-a@fail", status="failed", error=error, finished_at=finished))
    await redis.aclose()


def chat_answers(app: FastAPI, redis_url: str) -> list[tuple[int, bytes, dict[str, str]]]:
    Redis.from_url(redis_url).flushdb()
    asyncio.run(stored(redis_url))
    got = []
    with TestClient(app) as client:
        for headers, body in CHAT_REQUESTS:
            kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
            sent = client.post("/v1/chat/completions", headers=headers, **kwargs)
            got.append((sent.status_code, sent.content, dict(sent.headers)))
        metrics = client.get("/metrics").text
    assert 'llm_router_http_requests_total{method="POST",route="/v1/chat/completions",status_class="2xx"}' in metrics
    return got


def test_chat_completions_fast_path_answers_as_the_route_does(redis_url: str) -> None:
    settings = Settings(
        redis_url=redis_url, ingress_tokens=TOKENS, ingress_max_body_bytes=65536, ingress_wait_s=0.2, _env_file=None
    )
    served = chat_answers(create_app(settings), redis_url)
    reference = chat_answers(without_fast_path(create_app(settings)), redis_url)
    assert [s for s, _, _ in served] == [202, 409, 200, 503, 422, 422, 422, 400, 401, 401, 413]
    assert served == reference
    assert b'"content":"hi"' in served[2][1] and b"the gateway failed" in served[3][1]
