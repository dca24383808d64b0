"""Producers: hand chat, vision and compare jobs, and batches of them, to llm-router workers through Redis.

    from producers import ChatJob, Producer

The whole public surface is `__all__` (a test pins it): the Producer, its errors, and the
job and result models of the contract (worker.models), and batches (`producer.batches`).
"""

from worker.batches import Batch, BatchError
from worker.models import ChatJob, CompareJob, JobResult, ModelAnswer, VisionJob

from .api import JobConflict, JobRejected, Producer, ResultTimeout, SourceOverQuota
from .batches import Batches, BatchRejected, prompt_lines

__all__ = [
    "Batch",
    "BatchError",
    "BatchRejected",
    "Batches",
    "ChatJob",
    "CompareJob",
    "JobConflict",
    "JobRejected",
    "JobResult",
    "ModelAnswer",
    "Producer",
    "ResultTimeout",
    "SourceOverQuota",
    "VisionJob",
    "prompt_lines",
]
