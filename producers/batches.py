"""Batches in OpenAI's Batch API format, as the producer's API offers them: `producer.batches`.

    async with Producer() as producer:
        batch = await producer.batches.submit("requests.jsonl", completion_window="24h")
        batch = await producer.batches.wait(batch.id)
        async for line in producer.batches.results(batch.id):   # input order
            print(line["custom_id"], line["error"] or line["response"]["body"]["choices"][0])

The batch store itself (submit, follow, cancel, list, read the results) is the contract's, on
the worker side, where the workers' schedules make batches too: worker.batches.store, and the lines'
format (validation, the output shape, `prompt_lines`) worker.batches.format. This module names
them for producers (`from producers import Batches, BatchRejected, prompt_lines`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.batches.format import (
    EXTRAS,
    EXTRAS_KEY,
    MAX_CUSTOM_ID,
    MAX_ERRORS_KEPT,
    MAX_METADATA,
    BatchRejected,
    Line,
    LineError,
    Source,
    SubmitOptions,
    check_options,
    completion_body,
    output_line,
    prompt_lines,
    request_job,
    request_schema,
)
from worker.batches.store import CHUNK_BYTES, CHUNK_LINES, SWEEP_S, BatchStore, BatchTakenOver

if TYPE_CHECKING:
    from .api import Producer

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_LINES",
    "EXTRAS",
    "EXTRAS_KEY",
    "MAX_CUSTOM_ID",
    "MAX_ERRORS_KEPT",
    "MAX_METADATA",
    "SWEEP_S",
    "BatchRejected",
    "BatchTakenOver",
    "Batches",
    "Line",
    "LineError",
    "Source",
    "SubmitOptions",
    "check_options",
    "completion_body",
    "output_line",
    "prompt_lines",
    "request_job",
    "request_schema",
]


class Batches(BatchStore):
    """`producer.batches`: batches on the producer's Redis, queue and settings, their lines'
    jobs checked as the producer's own are (its source stamped; a tenant's enforced)."""

    def __init__(self, producer: Producer) -> None:
        super().__init__(producer.records)
        self.producer = producer
