"""Real `llm-router worker` processes for the chaos tests and benchmarks, configured the way
an operator would: through the environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from worker.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce `settings` in another process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json", exclude={"aisa_api_key"}).items():
        if value is not None:
            env[name.upper()] = value if isinstance(value, str) else json.dumps(value)
    env["AISA_API_KEY"] = settings.api_key()
    return env


class WorkerProcess:
    """`python -m producers.cli worker` in its own process, its log in `log_path`."""

    def __init__(self, settings: Settings, log_path: Path, burst: bool = False) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        args = [sys.executable, "-m", "producers.cli", "worker"] + (["--burst"] if burst else [])
        env = {**os.environ, **settings_env(settings), "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO")}
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=Path(__file__).resolve().parent.parent)

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
