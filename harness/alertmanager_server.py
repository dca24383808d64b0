"""A private Alertmanager (Debian's package `prometheus-alertmanager`) for the alert-delivery
test: the shipped deploy/alertmanager/alertmanager.yml with its webhook pointed at a local
receiver and its grouping waits shortened; no cluster port."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from .processes import answers, wait_started
from .redis_server import free_port

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "alertmanager" / "alertmanager.yml"


def alertmanager_binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found is None:
        raise RuntimeError(
            "alertmanager is not installed: apt-get install --no-install-recommends prometheus-alertmanager "
            "(`make` does it as root)"
        )
    return found


class WebhookReceiver:
    """An HTTP server on a free port keeping every JSON body POSTed to it (Alertmanager's webhook)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification received so far."""
        return [a for body in list(self.received) for a in body.get("alerts", [])]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class PrivateAlertmanager:
    def __init__(self, workdir: Path, webhook_url: str) -> None:
        self.binary = alertmanager_binary()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        config = yaml.safe_load(CONFIG.read_text())
        config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1m")
        for receiver in config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = webhook_url
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateAlertmanager:
        log_path = self.dir / "alertmanager.log"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.dir / 'alertmanager.yml'}",
                    f"--storage.path={self.dir / 'data'}",
                    f"--web.listen-address={self.address}",
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_started(self.proc, lambda: answers(self.url + "/-/ready"), 30, "alertmanager", log_path)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def __enter__(self) -> PrivateAlertmanager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
