"""Producers: hand chat, vision and compare jobs, and batches of them, to llm-router workers through Redis.

    from producers import ChatJob, Producer

The whole public surface is `__all__` (a test pins it): the Producer, its errors, and the
job and result models of the contract (worker.contract.models), and batches (`producer.batches`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.batches.record import Batch, BatchError
    from worker.contract.models import ChatJob, CompareJob, JobResult, ModelAnswer, VisionJob

    from .api import JobConflict, JobRejected, Producer, ResultTimeout, SourceOverQuota
    from .batches import Batches, BatchRejected, prompt_lines

# Each name from its module when it is first used (PEP 562): `llm-router chat` imports
# producers.cli, and with it this package, and must not pay for the batches' modules (~0.2 s).
_WHERE = {
    "Batch": "worker.batches.record",
    "BatchError": "worker.batches.record",
    "ChatJob": "worker.contract.models",
    "CompareJob": "worker.contract.models",
    "JobResult": "worker.contract.models",
    "ModelAnswer": "worker.contract.models",
    "VisionJob": "worker.contract.models",
    "JobConflict": "producers.api",
    "JobRejected": "producers.api",
    "Producer": "producers.api",
    "ResultTimeout": "producers.api",
    "SourceOverQuota": "producers.api",
    "Batches": "producers.batches",
    "BatchRejected": "producers.batches",
    "prompt_lines": "producers.batches",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # (`llm_router.` first in an installed copy, whose imports are rewritten, not these strings)
    value = getattr(importlib.import_module(__name__.removesuffix("producers") + _WHERE[name]), name)
    globals()[name] = value
    return value


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
