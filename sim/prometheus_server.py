"""A private Prometheus (Debian's package) for the observability tests: the shipped config and
rules, scraping local targets."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from .redis_server import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def prometheus_binaries(install: bool = False) -> tuple[str, str]:
    """(prometheus, promtool); with install=True, apt-get installs them when missing."""
    if shutil.which("prometheus") is None and install and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                       "apt-get install -y -qq --no-install-recommends prometheus",
                       shell=True, check=False, stdout=subprocess.DEVNULL)
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        raise RuntimeError("prometheus is not installed: apt-get install --no-install-recommends prometheus")
    return prometheus, promtool


class PrivatePrometheus:
    """deploy/prometheus/{prometheus.yml, alerts.yml} copied to `workdir`, with the targets
    files pointing at local ports and the intervals shortened to `interval_s`."""

    def __init__(self, workdir: Path, workers: list[str], exporter: str, interval_s: float = 1.0) -> None:
        self.binary, _ = prometheus_binaries()
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        interval = f"{int(interval_s * 1000)}ms"
        config["global"].update(scrape_interval=interval, evaluation_interval=interval)
        (workdir / "targets").mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        shutil.copy(DEPLOY / "alerts.yml", workdir / "alerts.yml")
        (workdir / "targets" / "workers.json").write_text(json.dumps([{"targets": workers}]))
        (workdir / "targets" / "exporter.json").write_text(json.dumps([{"targets": [exporter]}]))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivatePrometheus:
        self._log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:  # readiness, bounded
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("prometheus did not start: " + (self.dir / "prometheus.log").read_text()[-2000:])
            time.sleep(0.1)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"{expr}: {body.get('error')}")
        return body["data"]["result"]

    def get(self, path: str) -> Any:
        return httpx.get(self.url + path, timeout=10).json()["data"]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if hasattr(self, "_log"):
            self._log.close()

    def __enter__(self) -> PrivatePrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
