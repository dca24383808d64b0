"""A worker process's probes, served beside its `/metrics` on METRICS_PORT.

- `GET /healthz` (liveness): 200 while the event loop turns: the keeper task (worker.process.service)
  ticks at least every second; no tick for `LIVE_STALE_S` means the loop is blocked or the
  keeper died, and only a restart helps. Redis being down does not fail it (a restart would
  not bring Redis back).
- `GET /readyz` (readiness): 200 once the worker has beaten on Redis within `READY_STALE_S`
  (its heartbeat, leases and config digest written): it is consuming the queue.
- any other path: the Prometheus exposition, as before.

The state is per process, like the metrics; the keeper writes it, the server thread reads it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

LIVE_STALE_S = 30.0
READY_STALE_S = 10.0


class Health:
    def __init__(self) -> None:
        self.loop_at = time.monotonic()  # start-up counts as a tick: the keeper gets LIVE_STALE_S to begin
        self.redis_at: float | None = None

    def tick(self) -> None:
        self.loop_at = time.monotonic()

    def redis_ok(self) -> None:
        self.redis_at = self.loop_at = time.monotonic()

    def live(self) -> tuple[bool, str]:
        age = time.monotonic() - self.loop_at
        return age <= LIVE_STALE_S, f"keeper ticked {age:.1f}s ago"

    def ready(self) -> tuple[bool, str]:
        if self.redis_at is None:
            return False, "no heartbeat written to Redis yet"
        age = time.monotonic() - self.redis_at
        return age <= READY_STALE_S, f"heartbeat written to Redis {age:.1f}s ago"


HEALTH = Health()

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """/healthz, /readyz, else the metrics."""
    probe = {"/healthz": HEALTH.live, "/readyz": HEALTH.ready}.get(environ.get("PATH_INFO", ""))
    if probe is None:
        return metrics(environ, start_response)
    ok, why = probe()
    start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
    return [f"{'ok' if ok else 'failing'}: {why}\n".encode()]


metrics = make_wsgi_app()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are not logged."""


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serve the metrics and the probes on `host`:`port` in a daemon thread; OSError if the port is busy."""
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True, name="llm-router-metrics").start()
