"""A running HTTP ingress for the tests that drive it as a client would: `llm-router api` and
a worker, both real processes on one Settings (tests/e2e/test_ingress.py, test_ingress_stream.py,
test_ingress_fuzz.py; test_ingress_hostile.py runs the api alone)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

from harness.processes import LLMRouterProcess, WorkerProcess, answers, settings_env
from harness.redis_server import free_port
from worker.contract.settings import Settings

from .helpers import API_KEY

TOKENS = {"tok-a": "team-a", "tok-b": "team-b", "tok-c": "team-c"}


def ingress_settings(redis_url: str, sim_url: str, queue_name: str, **extra: object) -> Settings:
    """The settings of a test ingress and its worker: TOKENS, the simulator, one attempt a model
    (`extra` overrides or adds)."""
    base: dict[str, object] = {
        "aisa_api_key": API_KEY,
        "aisa_base_url": sim_url,
        "redis_url": redis_url,
        "queue_name": queue_name,
        "poll_delay_s": 0.01,
        "request_timeout_s": 5,
        "metrics_port": 0,
        "attempts_per_model": 1,
        "ingress_tokens": TOKENS,
        "ingress_wait_s": 60,
        "ingress_max_connections": 1100,  # a thousand long-polls and the test's own requests beside them
    }
    return Settings(**{**base, **extra}, _env_file=None)


@dataclass
class Ingress:
    """Clients of a running ingress, authenticated with a token of INGRESS_TOKENS."""

    url: str
    settings: Settings

    def client(self, token: str = "tok-a") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=token, max_retries=0, timeout=60)

    def http(self, token: str | None = "tok-a") -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@contextmanager
def running(settings: Settings, logs: Path, worker: bool = True) -> Iterator[str]:
    """`llm-router api` on a free port, on `settings`, and a worker process beside it (none:
    the jobs stay pending, test_ingress_hostile.py): the api's URL, once it answers."""
    workers = [WorkerProcess(settings, logs / "worker.log")] if worker else []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = LLMRouterProcess("api", "--port", str(port), env=settings_env(settings), log_path=logs / "api.log")
    try:
        api.wait_started(lambda: answers(f"{url}/healthz"), 30, "llm-router api")
        yield url
    finally:
        api.stop()
        for w in workers:
            w.stop()
