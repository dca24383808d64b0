"""Producers: hand chat, vision and compare jobs to llm-router workers through Redis.

    from producers import ChatJob, Producer

The whole public surface is `__all__` (a test pins it): the Producer, its errors, and the
job and result models of the contract (worker.models).
"""

from worker.models import ChatJob, CompareJob, JobResult, ModelAnswer, VisionJob

from .api import JobConflict, JobRejected, Producer, ResultTimeout

__all__ = [
    "ChatJob",
    "CompareJob",
    "JobConflict",
    "JobRejected",
    "JobResult",
    "ModelAnswer",
    "Producer",
    "ResultTimeout",
    "VisionJob",
]
