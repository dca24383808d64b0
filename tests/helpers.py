"""Helpers shared by the tests."""

from __future__ import annotations

import httpx

from sim.redis_server import free_port  # noqa: F401 - re-exported for the tests
from sim.server import SimServer
from worker.service import create_worker
from worker.settings import Settings

API_KEY = "test-key-0123456789"


def sim_admin(sim: SimServer, path: str, body: dict | None = None) -> dict:
    url = sim.base_url.removesuffix("/v1") + path
    response = httpx.post(url, json=body) if body is not None else httpx.get(url)
    response.raise_for_status()
    return response.json()


async def run_worker(settings: Settings, **overrides: object) -> object:
    """An arq Worker built in-process, in burst mode: runs until the queue is empty."""
    worker = create_worker(settings, burst=True, handle_signals=False, **overrides)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker
