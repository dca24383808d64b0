"""The configured bounds on a job, checked by producers before anything reaches Redis and by
workers for records that other writers made: its size, the max_tokens and max_completion_tokens
ceiling and the model's context window. (The job contract, worker.models, bounds each field on
its own.)"""

from __future__ import annotations

import re

from .models import CompareJob, JobBase, RoutedJob
from .settings import Settings

# Inline images have their own limit (MAX_IMAGE_BYTES): they do not count towards MAX_JOB_BYTES.
_INLINE_IMAGE = re.compile(rb"data:image/[\w+.-]+;base64,[A-Za-z0-9+/=]*")


def text_size(record: bytes) -> int:
    """A job record's size in bytes, its inline images left out."""
    return len(record) - sum(len(m) for m in _INLINE_IMAGE.findall(record))


def problem(job: JobBase, settings: Settings, size: int) -> tuple[str, str] | None:
    """(field, what is wrong and how to fix it), or None when the job is within bounds."""
    if size > settings.max_job_bytes:
        return "job", (
            f"is {size} bytes (inline images left out), over MAX_JOB_BYTES={settings.max_job_bytes}: "
            "shorten the messages or split the job"
        )
    for field in ("max_tokens", "max_completion_tokens"):
        tokens = getattr(job, field)
        if tokens is None:
            continue
        if tokens > settings.max_output_tokens:
            return field, f"{tokens} is over MAX_OUTPUT_TOKENS={settings.max_output_tokens}: ask for fewer"
        for model in _models(job):
            context = settings.model_context.get(model)
            if context is not None and tokens >= context:
                return field, f"{tokens} does not fit {model}'s context window of {context} tokens: ask for fewer"
    return None


def _models(job: JobBase) -> list[str]:
    if isinstance(job, RoutedJob):
        return [job.model]
    if isinstance(job, CompareJob):
        return list(job.models)
    return []
