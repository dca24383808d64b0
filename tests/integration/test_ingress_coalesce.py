"""The ingress sends concurrent requests' enqueues as one pipeline (producers.coalesce): each
job keeps its own answer, against a real Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from producers.api import JobConflict
from producers.http.deps import Ingress
from worker.contract.models import ChatJob
from worker.contract.settings import Settings

TOKENS = {"tok-a": "team-a"}


def job(i: int) -> ChatJob:
    return ChatJob(model="gpt-4.1", messages=[{"role": "user", "content": f"hello {i}"}])


async def submit_all(ingress: Ingress, jobs: list[tuple[ChatJob, str]]) -> list[bool | BaseException]:
    producer = ingress.producer("team-a")

    async def created(j: ChatJob, job_id: str) -> bool:
        return (await producer.submit(j, job_id))[1]

    return await asyncio.gather(*(created(j, job_id) for j, job_id in jobs), return_exceptions=True)


async def test_a_batch_answers_each_job_its_own(redis_url: str) -> None:
    ingress = Ingress(Settings(redis_url=redis_url, ingress_tokens=TOKENS, _env_file=None))
    sent: list[int] = []
    send = ingress.script_batches._send

    async def counting(batch):
        sent.append(len(batch))
        await send(batch)

    ingress.script_batches._send = counting  # type: ignore[method-assign]
    try:
        first = await submit_all(ingress, [(job(0), "team-a@k0")])
        answers = await submit_all(ingress, [(job(i), f"team-a@k{i}") for i in range(40)] + [(job(99), "team-a@k1")])
        assert first == [True]
        assert answers[0] is False and answers[1:40] == [True] * 39  # k0 was there: the same job again
        assert isinstance(answers[40], JobConflict)  # k1 names another job: only that request is refused
        assert sent == [1, 41]  # the 41 calls of one turn of the loop went as one pipeline
        assert await ingress.producer("team-a").queued() == 40
    finally:
        await ingress.aclose()


async def test_scripts_flushed_are_loaded_again(redis_url: str) -> None:
    ingress = Ingress(Settings(redis_url=redis_url, ingress_tokens=TOKENS, _env_file=None))
    try:
        assert await submit_all(ingress, [(job(0), "team-a@a0")]) == [True]
        await Redis.from_url(redis_url).script_flush()  # as after a Redis restart
        answers = await submit_all(ingress, [(job(i), f"team-a@b{i}") for i in range(20)])
        assert answers == [True] * 20
        assert await ingress.producer("team-a").queued() == 21
    finally:
        await ingress.aclose()


async def test_redis_down_fails_every_job_of_the_batch() -> None:
    ingress = Ingress(Settings(redis_url="redis://127.0.0.1:1/0", ingress_tokens=TOKENS, _env_file=None))
    try:
        answers = await submit_all(ingress, [(job(i), f"team-a@c{i}") for i in range(10)])
        assert all(isinstance(a, RedisConnectionError) for a in answers), answers
    finally:
        await ingress.aclose()
