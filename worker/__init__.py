"""llm-router workers: arq jobs that call the AIsa gateway and store results with their cost.

`arq worker.WorkerSettings` runs a worker with settings from the environment; the class is
built on first access so that importing this package never needs an API key.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from .process.service import settings_class

        cls = settings_class()
        globals()["WorkerSettings"] = cls
        return cls
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
