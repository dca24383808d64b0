"""A private Prometheus (Debian's package) for the observability tests: the shipped config and
rules, scraping local targets."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from .processes import answers, wait_started
from .redis_server import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def prometheus_binaries() -> tuple[str, str]:
    """(prometheus, promtool)."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        raise RuntimeError(
            "prometheus is not installed: apt-get install --no-install-recommends prometheus (`make` does it as root)"
        )
    return prometheus, promtool


class PrivatePrometheus:
    """deploy/prometheus/{prometheus.yml, alerts.yml} copied to `workdir`, with the targets
    files pointing at local ports and the intervals shortened to `interval_s`; alerts go to
    `alertmanager` (host:port; None: nowhere), and with `alert_for` every alert's `for:` is that."""

    def __init__(
        self,
        workdir: Path,
        workers: list[str],
        exporter: str,
        interval_s: float = 1.0,
        alertmanager: str | None = None,
        alert_for: str | None = None,
    ) -> None:
        self.binary, _ = prometheus_binaries()
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        interval = f"{int(interval_s * 1000)}ms"
        config["global"].update(scrape_interval=interval, evaluation_interval=interval)
        if alertmanager is None:
            config.pop("alerting", None)
        else:
            config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [alertmanager]
        (workdir / "targets").mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
        for rule in (r for g in rules["groups"] for r in g["rules"] if "alert" in r and alert_for):
            rule["for"] = alert_for
        (workdir / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        (workdir / "targets" / "workers.json").write_text(json.dumps([{"targets": workers}]))
        (workdir / "targets" / "exporter.json").write_text(json.dumps([{"targets": [exporter]}]))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivatePrometheus:
        log_path = self.dir / "prometheus.log"
        with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_started(self.proc, lambda: answers(self.url + "/-/ready"), 30, "prometheus", log_path)
        return self

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

    def __enter__(self) -> PrivatePrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
