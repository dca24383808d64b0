"""The job contract's one registry: a new job kind is its model alone, and the public surface
of `producers` is pinned."""

from typing import Any, Literal

import pytest
from pydantic import Field

import producers
from producers import Producer
from tests.helpers import run_worker, sim_admin
from worker.calls.jobs import functions
from worker.contract import serde
from worker.contract.models import JOB_KINDS, RoutedJob, job_kind


class SummaryJob(RoutedJob):
    """A kind that exists only in this test: summarise a text with one model."""

    kind: Literal["summary"] = "summary"
    text: str = Field(min_length=1)

    def build_messages(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": "Summarise."}, {"role": "user", "content": self.text}]


@pytest.fixture
def summary_kind():
    job_kind(SummaryJob)
    yield SummaryJob
    del JOB_KINDS["summary"]


async def test_a_new_job_kind_is_only_its_model(summary_kind, settings, sim):
    assert "summary" in functions() and serde.loads(b'{"f": "summary", "a": [{}]}')["f"] == "summary"
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        job_id = await producer.enqueue(SummaryJob(model="gpt-4.1", text="a long text", fallbacks=["gpt-4o"]))
        await run_worker(settings)
        result = await producer.result(job_id)
    assert result.status == "succeeded" and result.kind == "summary"
    assert result.content == "[gpt-4.1] You said: a long text" and result.cost > 0
    assert sim_admin(sim, "/_sim/stats")["calls"] == {"gpt-4.1": 1}


def test_an_unregistered_kind_is_refused_by_the_worker():
    record = serde.loads(b'{"f": "summary", "a": [{}]}')
    assert record["f"] == serde.INVALID and "unknown job kind 'summary'" in record["a"][0]


def test_the_public_surface_of_producers():
    pinned = """Batch BatchError BatchRejected Batches ChatJob CompareJob JobConflict JobRejected JobResult
                ModelAnswer Producer ResultTimeout SourceOverQuota VisionJob prompt_lines"""
    assert sorted(producers.__all__) == pinned.split()
    assert all(getattr(producers, name) for name in producers.__all__)
