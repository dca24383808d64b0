"""Real `llm-router <verb>` processes (workers, the exporter, the simulator) for the tests, the
benchmarks and the demo, configured the way an operator would: through the environment and
the installed `llm-router` console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from .wait import wait_until

if TYPE_CHECKING:
    from worker.contract.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def llm_router() -> str:
    """The `llm-router` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("llm-router")
    if not script.exists():
        raise RuntimeError(f"{script} not found: install the project into this environment (pip install -e .)")
    return str(script)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce `settings` in another process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(
        mode="json", exclude={"aisa_api_key", "webhook_secret", "console_secret"}
    ).items():
        if value is not None:
            env[name.upper()] = value if isinstance(value, str) else json.dumps(value)
    env["AISA_API_KEY"] = settings.api_key()
    if settings.webhook_secret is not None:
        env["WEBHOOK_SECRET"] = settings.webhook_secret.get_secret_value()
    if settings.console_secret is not None:
        env["CONSOLE_SECRET"] = settings.console_secret.get_secret_value()
    return env


def answers(url: str) -> bool:
    """True if a GET of `url` succeeds (2xx): a readiness probe."""
    try:
        return httpx.get(url, timeout=1).is_success
    except httpx.HTTPError:
        return False


def wait_started(
    proc: subprocess.Popen[bytes], ready: Callable[[], object], timeout: float, what: str, log_path: Path | None = None
) -> None:
    """Wait until `ready()` is truthy. If `proc` exits first or `timeout` passes, kill it and raise
    RuntimeError naming `what` (with the end of its log)."""

    def up() -> object:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}")
        return ready()

    try:
        wait_until(up, timeout, f"{what} to start")
    except (RuntimeError, TimeoutError) as exc:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        tail = log_path.read_text(errors="replace")[-2000:] if log_path and log_path.exists() else ""
        raise RuntimeError(f"{what} did not start: {exc}" + (f"\n{tail}" if tail else "")) from None


class LLMRouterProcess:
    """`llm-router *args` in its own process, with `env` on top of this one's; its output goes
    to `log_path` (appended), or to this process's if None."""

    def __init__(self, *args: str, env: Mapping[str, str] | None = None, log_path: Path | None = None) -> None:
        self.log_path = log_path
        command = [llm_router(), *args]
        full_env = {**os.environ, **(env or {})}
        if log_path is None:
            self.proc = subprocess.Popen(command, env=full_env, cwd=ROOT)
        else:
            with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
                self.proc = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_started(self, ready: Callable[[], object], timeout: float, what: str) -> LLMRouterProcess:
        wait_started(self.proc, ready, timeout, what, self.log_path)
        return self

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGKILL (no drain) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


class WorkerProcess(LLMRouterProcess):
    """`llm-router worker [--burst]` running `settings`, its log in `log_path`."""

    def __init__(self, settings: Settings, log_path: Path, burst: bool = False) -> None:
        super().__init__(
            "worker",
            *(["--burst"] if burst else []),
            log_path=log_path,
            env={**settings_env(settings), "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO")},
        )
