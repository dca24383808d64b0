"""`POST /v1/jobs` by producers.http_fastpath answers exactly what the FastAPI route answers.

The same requests go to the app as served (fast path) and to the app without it (every request
through FastAPI's route, the reference), each against a flushed real Redis: statuses, bodies and
headers must match, and the request metrics must count the fast path under the route's template.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis import Redis

from producers.http import create_app
from producers.http_fastpath import JobsFastPath
from worker.settings import Settings

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
