"""One configuration for the fleet: real worker processes publish their config digest, the
exporter counts the distinct ones, `llm-router fleet` names the settings that differ, a busy
METRICS_PORT stops a worker's start, and the worker's probes answer beside its metrics."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from harness.processes import LLMRouterProcess, answers, llm_router, settings_env
from harness.wait import wait_until
from tests.helpers import API_KEY, free_port
from worker.contract.keys import CONFIG_PREFIX, WORKER_CONFIG_PREFIX
from worker.contract.settings import RateLimit, Settings
from worker.process import fleet, health


def gauges(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_the_digest_covers_what_must_agree_and_no_secret():
    base = Settings(aisa_api_key=API_KEY, ingress_tokens={"tok-secret-1": "billing"}, _env_file=None)
    published = fleet.fleet_settings(base)
    assert {"rate_limits", "global_rate_limit", "fallbacks", "default_fallbacks", "prices", "max_wait_s"} <= set(
        published
    )
    assert not {"aisa_api_key", "ingress_tokens", "redis_url", "metrics_port", "worker_concurrency"} & set(published)
    assert API_KEY not in json.dumps(published) and "tok-secret-1" not in json.dumps(published)
    same = fleet.digest(fleet.fleet_settings(base.model_copy(update={"worker_concurrency": 7, "metrics_port": 1})))
    assert same == fleet.digest(published)  # per-process tuning is not a disagreement
    # nor is one worker's logging turned up to debug it
    debugged = base.model_copy(update={"log_level": "DEBUG", "log_format": "json"})
    assert fleet.digest(fleet.fleet_settings(debugged)) == fleet.digest(published)
    other = base.model_copy(update={"rate_limits": {"gpt-4.1": RateLimit(rpm=60)}})
    assert fleet.digest(fleet.fleet_settings(other)) != fleet.digest(published)
    assert fleet.differing(published, fleet.fleet_settings(other)) == ["RATE_LIMITS"]
    # a setting another module adds later is fleet-wide by default; a secret-looking name is never published
    assert fleet.is_secret("webhook_secret", "x") and not fleet.is_secret("max_output_tokens", 1)


@pytest.fixture
def fleet_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"ingress_tokens": {"tok-secret-1": "billing"}})


def test_two_workers_with_different_rate_limits_are_seen(fleet_settings, redis_url, workers, tmp_path):
    limited = fleet_settings.model_copy(
        update={"rate_limits": {"gpt-4.1": RateLimit(rpm=600)}, "metrics_port": free_port()}
    )
    unlimited = fleet_settings.model_copy(update={"metrics_port": free_port()})
    exporter_port = free_port()
    exporter = LLMRouterProcess(
        "exporter",
        env={**settings_env(fleet_settings), "EXPORTER_PORT": str(exporter_port)},
        log_path=tmp_path / "exporter.log",
    )
    try:
        first = workers(limited)
        first.wait_started(lambda: answers(f"http://127.0.0.1:{limited.metrics_port}/readyz"), 30, "worker 1")
        exporter.wait_started(lambda: answers(f"http://127.0.0.1:{exporter_port}/metrics"), 30, "the exporter")
        assert gauges(exporter_port)["llm_router_config_digests"] == 1
        second = workers(unlimited)
        second.wait_started(lambda: answers(f"http://127.0.0.1:{unlimited.metrics_port}/readyz"), 30, "worker 2")
        seen = wait_until(
            lambda: (g := gauges(exporter_port))["llm_router_workers_live"] == 2 and g,
            10,
            "the exporter to see both workers",
        )
        assert seen["llm_router_config_digests"] == 2
        wait_until(lambda: "RATE_LIMITS" in second.log(), 10, "worker 2 to name the setting it differs in")
        assert "differs from live workers'" in second.log()
        env = settings_env(fleet_settings)
        out = subprocess.run([llm_router(), "fleet", "--json"], env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 1, out.stderr
        report = json.loads(out.stdout)
        assert [len(r["workers"]) for r in report] == [1, 1]
        assert report[1]["differs_in"] == ["RATE_LIMITS"] and report[0]["differs_in"] == []
        # what is published holds no secret
        redis = Redis.from_url(redis_url)
        published = b"".join(redis.get(k) or b"" for k in redis.scan_iter(f"{CONFIG_PREFIX}*"))
        assert b"gpt-4.1" in published and API_KEY.encode() not in published and b"tok-secret-1" not in published

        second.stop()  # SIGKILL: its heartbeat goes stale, and so does its vote
        wait_until(lambda: gauges(exporter_port)["llm_router_config_digests"] == 1, 15, "the digests to agree again")
        out = subprocess.run([llm_router(), "fleet"], env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "1 workers" in out.stdout, out.stdout + out.stderr
    finally:
        exporter.stop()


def test_a_busy_metrics_port_stops_the_start(fleet_settings, workers):
    port = free_port()
    first = workers(fleet_settings.model_copy(update={"metrics_port": port}))
    first.wait_started(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 30, "worker 1")
    second = workers(fleet_settings.model_copy(update={"metrics_port": port}))
    assert second.wait(30) == 2
    assert "METRICS_PORT" in second.log() and str(port) in second.log()
    # the first keeps serving its own metrics and probes
    assert answers(f"http://127.0.0.1:{port}/readyz")
    assert "llm_router_jobs_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text


def test_probes_fail_when_their_signal_is_stale(monkeypatch):
    probe = health.Health()
    assert probe.live()[0] and not probe.ready()[0]  # up, but no heartbeat written yet
    probe.redis_ok()
    assert probe.ready()[0]
    now = time.monotonic()
    monkeypatch.setattr(health.time, "monotonic", lambda: now + health.READY_STALE_S + 1)
    assert probe.live()[0] and not probe.ready()[0]  # Redis unreachable: not ready, still alive
    monkeypatch.setattr(health.time, "monotonic", lambda: now + health.LIVE_STALE_S + 1)
    assert not probe.live()[0]  # the keeper stopped ticking: the loop is stuck
    monkeypatch.setattr(health, "HEALTH", probe)
    status: list[str] = []
    body = health.app({"PATH_INFO": "/healthz"}, lambda s, h: status.append(s))
    assert status == ["503 Service Unavailable"] and b"keeper ticked" in b"".join(body)


async def test_the_keeper_keeps_the_worker_live_while_redis_is_down(settings):
    # The worker's Redis client rides out an outage by retrying each command for about a minute
    # (worker.contract.connections): the keeper's Redis work hangs meanwhile, but the event loop turns, so
    # /healthz must stay up (a restart would not bring Redis back); /readyz is what goes stale.
    from arq import create_pool

    from harness.redis_server import PrivateRedis
    from harness.wait import wait_until_async
    from worker.contract import connections
    from worker.process import service

    with PrivateRedis() as server:
        s = settings.model_copy(update={"redis_url": server.url, "metrics_port": free_port()})
        pool = await create_pool(connections.arq_settings(s.redis_url))
        ctx = {"settings": s, "redis": pool}
        await service.startup(ctx)
        try:
            started = time.monotonic()
            await wait_until_async(lambda: (health.HEALTH.redis_at or 0) > started, 10, "a heartbeat on Redis")
            server.kill()
            killed = time.monotonic()
            await wait_until_async(lambda: health.HEALTH.loop_at > killed + 3, 8, "keeper ticks with Redis down")
            assert health.HEALTH.live()[0] and (health.HEALTH.redis_at or 0) < killed + 1
        finally:
            await service.shutdown(ctx)
            await pool.aclose()


def test_a_worker_that_stops_cleanly_withdraws_its_digest(fleet_settings, redis_url, workers):
    # a rolling restart with a changed setting: the old worker's digest must not linger as a disagreement
    old = fleet_settings.model_copy(update={"metrics_port": free_port()})
    new = fleet_settings.model_copy(
        update={"rate_limits": {"gpt-4.1": RateLimit(rpm=600)}, "metrics_port": free_port()}
    )
    first = workers(old).wait_started(lambda: answers(f"http://127.0.0.1:{old.metrics_port}/readyz"), 30, "worker 1")
    workers(new).wait_started(lambda: answers(f"http://127.0.0.1:{new.metrics_port}/readyz"), 30, "worker 2")
    env = settings_env(fleet_settings)
    both = subprocess.run([llm_router(), "fleet", "--json"], env=env, capture_output=True, text=True, timeout=30)
    assert both.returncode == 1 and len(json.loads(both.stdout)) == 2, both.stdout + both.stderr
    first.send(signal.SIGTERM)
    assert first.wait(30) == 0
    # at once, not after the heartbeat goes stale
    out = subprocess.run([llm_router(), "fleet", "--json"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert [row["digest"] for row in json.loads(out.stdout)] == [fleet.digest(fleet.fleet_settings(new))]
    assert len(Redis.from_url(redis_url).keys(f"{WORKER_CONFIG_PREFIX}*")) == 1


def test_a_worker_stops_on_sigterm_while_its_redis_is_gone(fleet_settings, workers):
    # Redis gone for good (a node lost with the worker's pod being deleted): SIGTERM must still end
    # the process within its grace, not after the Redis client's retries (about 75 s,
    # worker.contract.connections) for each step of the shutdown that writes to Redis.
    from harness.redis_server import PrivateRedis

    with PrivateRedis() as server:
        s = fleet_settings.model_copy(update={"redis_url": server.url, "metrics_port": free_port()})
        w = workers(s).wait_started(lambda: answers(f"http://127.0.0.1:{s.metrics_port}/readyz"), 30, "worker")
        server.kill()
        w.send(signal.SIGTERM)
        assert w.wait(30) == 0
