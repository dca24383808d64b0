"""What a producer verb's start-up imports (issue 21: `llm-router chat`'s own overhead): not the
webhook sender's HTTP client and transport (httpx, httpcore, anyio; rich and click's extras
through httpx._main) nor the workers' metrics (prometheus_client), which a job that names no URL
never uses. Read from the console script run under `python -X importtime`, which lists every
module the process imports."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from harness.processes import llm_router

# what only a worker, or a job naming a callback or image URL, needs
WORKERS_ONLY = {"httpx", "httpcore", "anyio", "rich", "prometheus_client"}
WORKERS_ONLY_OURS = {"worker.outputs.webhooks", "worker.calls.pinned", "worker.observe.metrics"}
CHAT = ["chat", "--model", "gpt-4o-mini", "--message", "hi", "--no-wait"]


def imported(env: dict[str, str], args: list[str]) -> set[str]:
    """Every module `llm-router ARGS` imports (it must succeed)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", llm_router(), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


@pytest.fixture
def env(redis_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AISA_", "WEBHOOK_", "IMAGE_"))}
    return {**env, "AISA_API_KEY": "sk-startup", "REDIS_URL": redis_url, "QUEUE_NAME": "llm-router:startup"}


@pytest.mark.parametrize("base_url", [None, "http://127.0.0.1:8700/v1", "https://gateway.example.com/openai/v1"])
def test_chat_no_wait_imports_no_http_client_nor_metrics(env, base_url):
    if base_url:
        env["AISA_BASE_URL"] = base_url
    modules = imported(env, CHAT)
    assert "producers.api" in modules and "worker.contract.records" in modules  # (it did enqueue through them)
    found = ({m.partition(".")[0] for m in modules} & WORKERS_ONLY) | (modules & WORKERS_ONLY_OURS)
    assert not found, f"imported: {sorted(found)}"


def test_a_base_url_httpx_must_read_is_still_read_by_it_and_refused(env):
    env["AISA_BASE_URL"] = "https://999.1.1.1/v1"
    proc = subprocess.run([llm_router(), *CHAT], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert re.search(r"AISA_BASE_URL: '.*' is not a URL \(Invalid IPv4 address", proc.stderr), proc.stderr
