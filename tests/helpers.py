"""Helpers shared by the tests."""

from __future__ import annotations

from harness.redis_server import free_port  # noqa: F401 - re-exported for the tests
from harness.sim_admin import sim_admin  # noqa: F401 - re-exported for the tests
from worker.runner import RouterWorker
from worker.service import create_worker
from worker.settings import Settings

API_KEY = "test-key-0123456789"


async def run_worker(settings: Settings, **overrides: object) -> RouterWorker:
    """An arq Worker built in-process, in burst mode: runs until the queue is empty."""
    worker = create_worker(settings, burst=True, handle_signals=False, **overrides)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker
