"""REDIS_URL beyond one plain Redis: a Sentinel URL (master + replica + three sentinels) and a
TLS URL with a password (a redis-server with TLS only), each taken by a real worker process,
the Producer, the exporter, the HTTP ingress and an operator verb (`llm-router spend`). The
failover itself is tests/e2e/test_failover.py (`make chaos`)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import LLMRouterProcess, answers, settings_env, wait_started
from harness.redis_sentinel import SentinelCluster
from harness.redis_server import free_port, reachable, redis_server_binary
from producers.api import Producer
from tests.helpers import self_signed
from worker.contract import connections
from worker.contract.settings import ConfigError

CLI = Path(sys.executable).parent / "llm-router"


def test_sentinel_urls_parse():
    s = connections.sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,sentinel-b,10.0.0.3:26380/mymaster/2")
    assert s is not None
    assert s.hosts == [("10.0.0.1", 26379), ("sentinel-b", 26379), ("10.0.0.3", 26380)]
    assert (s.service, s.db, s.password, s.tls) == ("mymaster", 2, "s3cret", False)
    tls = connections.sentinel_url("rediss+sentinel://h:1/m?sentinel_password=x&ssl_ca_certs=/ca.pem")
    assert (
        tls is not None and tls.tls and tls.sentinel_password == "x" and tls.tls_options == {"ssl_ca_certs": "/ca.pem"}
    )
    assert connections.sentinel_url("redis://localhost:6379/0") is None
    rs = connections.arq_settings("redis+sentinel://h1:1,h2:2/svc/3")
    assert rs.sentinel and rs.host == [("h1", 1), ("h2", 2)] and rs.sentinel_master == "svc" and rs.database == 3
    rs = connections.arq_settings("rediss://:pw@host:6380/1?ssl_ca_certs=/ca.pem")
    assert rs.ssl and rs.password == "pw" and rs.database == 1 and rs.ssl_ca_certs == "/ca.pem"
    for bad in ("redis+sentinel://h:1", "redis+sentinel://h:x/m", "redis+sentinel:///m", "http://h:6379/0"):
        with pytest.raises(ConfigError, match="REDIS_URL"):
            connections.arq_settings(bad)


@pytest.fixture
def sentinel_url(tmp_path) -> Iterator[str]:
    cluster = SentinelCluster(tmp_path / "redis").start()
    yield cluster.url
    cluster.stop()


@pytest.fixture
def tls_url(tmp_path) -> Iterator[str]:
    """A redis-server that speaks only TLS and wants a password: `rediss://:pw@...`."""
    cert, key = self_signed(tmp_path, "127.0.0.1")
    port = free_port()
    server = f"--port 0 --tls-port {port} --bind 127.0.0.1 --save '' --requirepass pw-0123 --tls-auth-clients no"
    server += f" --tls-cert-file {cert} --tls-key-file {key} --tls-ca-cert-file {cert}"
    proc = subprocess.Popen(
        [redis_server_binary(), *shlex.split(server)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"rediss://:pw-0123@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    wait_started(proc, lambda: reachable(url), 10, "redis-server with TLS")
    assert not reachable(f"redis://:pw-0123@127.0.0.1:{port}/0")  # no plain text
    yield url
    proc.terminate()
    proc.wait(10)


def exporter_gauges(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


@pytest.mark.parametrize("kind", ["sentinel_url", "tls_url"])
async def test_every_process_on_the_url(kind, request, settings, sim, workers, tmp_path: Path):
    """The worker, the Producer, the exporter and the HTTP ingress, all on the one REDIS_URL."""
    url = request.getfixturevalue(kind)
    s = settings.model_copy(update={"redis_url": url, "metrics_port": free_port(), "ingress_tokens": {"tok": "web"}})
    exporter_port, api_port = free_port(), free_port()
    exporter = LLMRouterProcess(
        "exporter", env={**settings_env(s), "EXPORTER_PORT": str(exporter_port)}, log_path=tmp_path / "exporter.log"
    )
    api = LLMRouterProcess("api", "--port", str(api_port), env=settings_env(s), log_path=tmp_path / "api.log")
    try:
        async with Producer(url) as producer:
            early = await producer.chat("gpt-4o-mini", "queued before any worker")
            exporter.wait_started(lambda: answers(f"http://127.0.0.1:{exporter_port}/metrics"), 30, "the exporter")
            gauges = exporter_gauges(exporter_port)
            assert gauges["llm_router_exporter_redis_up"] == 1 and gauges["llm_router_queue_depth"] == 1
            workers(s).wait_started(lambda: answers(f"http://127.0.0.1:{s.metrics_port}/readyz"), 30, "the worker")
            result = await producer.wait(early, timeout=30)
            assert result is not None and result.status == "succeeded"
            api.wait_started(lambda: answers(f"http://127.0.0.1:{api_port}/readyz"), 30, "llm-router api")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=60) as http:
                answer = await http.post(
                    "/v1/chat/completions",
                    headers={"Authorization": "Bearer tok"},
                    json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "via the ingress"}]},
                )
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "[gpt-4.1] You said: via the ingress"
        assert exporter_gauges(exporter_port)["llm_router_workers_live"] == 1
        # an operator verb on the same URL: the spend report reads the two calls
        spend = subprocess.run(
            [str(CLI), "spend", "--days", "1", "--json"], env={**os.environ, **settings_env(s)}, capture_output=True
        )
        assert spend.returncode == 0, spend.stderr
        assert json.loads(spend.stdout)["total"]["calls"] == 2
    finally:
        api.stop()
        exporter.stop()


async def test_arq_worker_settings_use_our_pool_on_a_sentinel_url(sentinel_url, settings, monkeypatch):
    # `arq worker.WorkerSettings`: arq's own pool passes no retry options to Sentinel's
    # connections, so a failover stopped the worker; it must run on ours, as `llm-router worker` does
    from arq.worker import Worker, get_kwargs

    from worker.process.service import settings_class

    s = settings.model_copy(update={"redis_url": sentinel_url})
    for name, value in settings_env(s).items():
        monkeypatch.setenv(name, value)
    worker_settings = settings_class()
    pool = worker_settings.redis_pool  # type: ignore[attr-defined]
    assert pool.connection_pool.connection_class is connections.FollowMaster
    assert isinstance(pool.connection_pool.connection_kwargs["retry"], connections.SayingRetry)
    async with Producer(sentinel_url, queue_name=s.queue_name) as producer:
        job = await producer.chat("gpt-4.1", "via arq on Sentinel")
        worker = Worker(**get_kwargs(worker_settings), burst=True, handle_signals=False)
        try:
            await worker.main()
            assert worker.pool is pool
        finally:
            await worker.close()
        result = await producer.result(job)
    assert result is not None and result.status == "succeeded"
