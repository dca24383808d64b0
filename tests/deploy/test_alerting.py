"""Alerts that reach a person: a real Prometheus with the shipped rules fires "credits run out
within 24 h" at a real Alertmanager with the shipped config, which delivers it to a webhook;
and the queue alerts' interactive-only signals, read by the exporter from the real Redis."""

from __future__ import annotations

import time

import pytest
from prometheus_client.registry import CollectorRegistry

from harness.alertmanager_server import PrivateAlertmanager, WebhookReceiver, alertmanager_binary
from harness.processes import LLMRouterProcess, WorkerProcess, settings_env
from harness.prometheus_server import PrivatePrometheus, prometheus_binaries
from harness.redis_server import free_port
from harness.wait import wait_until_async
from producers.api import Producer
from tests.helpers import sim_admin
from worker.batches.record import line_job_id
from worker.observe.exporter import QueueCollector

ALERT = "LLMRouterCreditsRunOutWithin24h"


async def test_credits_run_out_alert_reaches_the_webhook(settings, sim, tmp_path):
    try:
        prometheus_binaries()
        alertmanager_binary()
    except RuntimeError as exc:
        pytest.fail(f"{exc} (`make test` installs it)")
    base = settings.model_copy(update={"worker_concurrency": 2})
    metrics_port, exporter_port = free_port(), free_port()
    # 2 cents left; the 30 jobs spend ~0.17 of a cent: at that hourly burn rate they last ~11 h
    sim_admin(sim, "/_sim/credits", {"credits": 0.02})
    sim_admin(sim, "/_sim/config", {"latency_ms": 250})  # the spend spreads over several scrapes
    with WebhookReceiver() as receiver, PrivateAlertmanager(tmp_path / "am", receiver.url) as alertmanager:
        prom = PrivatePrometheus(
            tmp_path / "prom",
            [f"127.0.0.1:{metrics_port}"],
            f"127.0.0.1:{exporter_port}",
            interval_s=0.5,
            alertmanager=alertmanager.address,
            alert_for="1s",
        ).start()
        worker = WorkerProcess(base.model_copy(update={"metrics_port": metrics_port}), tmp_path / "w.log")
        exporter = LLMRouterProcess(
            "exporter", env={**settings_env(base), "EXPORTER_PORT": str(exporter_port)}, log_path=tmp_path / "e.log"
        )
        try:

            def both_up() -> bool:
                up = prom.query("sum(up)")
                return bool(up) and float(up[0]["value"][1]) == 2

            # scraped before the spending starts, so the counter's rise is seen
            await wait_until_async(both_up, 30, "Prometheus to scrape the worker and the exporter", interval=0.2)
            async with Producer(base.redis_url, queue_name=base.queue_name) as producer:
                ids = [await producer.chat("gpt-4.1", f"q{i}", max_tokens=50) for i in range(30)]

                async def all_done() -> bool:
                    return all([await producer.redis.exists(f"llm-router:result:{i}") for i in ids])

                await wait_until_async(all_done, 60, "the jobs to finish", interval=0.2)

            def delivered():
                return [a for a in receiver.alerts() if a["labels"]["alertname"] == ALERT and a["status"] == "firing"]

            def why() -> str:
                return (
                    f"{ALERT} to reach the webhook; received {receiver.alerts()}; Prometheus alerts "
                    f"{prom.get('/api/v1/alerts')}; signal {prom.query('llm_router:credits_seconds_left')}; "
                    f"credits {prom.query('llm_router_credits_remaining_usd')}"
                )

            found = await wait_until_async(delivered, 60, why, interval=0.25)
        finally:
            prom.stop()
            exporter.stop()
            worker.stop()
    alert = found[0]
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"].startswith("At the last hour's burn rate the credits run out in ")
    # from the real Prometheus's rule, through the real Alertmanager
    assert f":{prom.port}/graph?" in alert["generatorURL"] and "credits_seconds_left" in alert["generatorURL"]
    assert not [a for a in receiver.alerts() if a["labels"]["alertname"] == "LLMRouterQueuePaused"]


async def test_the_queue_gauges_of_the_alerts_leave_batch_lines_out(settings, redis):
    now = time.time()
    batch = "batch_" + "b" * 32
    queue = settings.queue_name
    # an overnight batch: lines moved to the queue long ago (deferred, now due) and one running
    await redis.zadd(queue, {line_job_id(batch, i): int((now - 3600 + i) * 1000) for i in range(40)})
    await redis.zadd(queue, {line_job_id(batch, 99): int((now + 30) * 1000)})
    await redis.zadd("llm-router:bulk:" + queue, {line_job_id(batch, 100 + i): i for i in range(500)})

    def gauges():
        registry = CollectorRegistry()
        registry.register(QueueCollector(settings))
        names = (
            "llm_router_queue_depth",
            "llm_router_queue_oldest_job_age_seconds",
            "llm_router_queue_interactive_depth",
            "llm_router_queue_interactive_oldest_job_age_seconds",
            "llm_router_bulk_depth",
        )
        return [registry.get_sample_value(n) for n in names]

    depth, oldest, interactive, interactive_oldest, bulk = gauges()
    assert (depth, interactive, bulk) == (40, 0, 500) and oldest > 3500
    assert interactive_oldest == 0  # nothing interactive waits: the backlog alerts stay quiet
    # an interactive job that has waited 20 s, behind the lines
    await redis.zadd(
        queue,
        {
            "order-42": int((now - 20) * 1000),
            "order-43": int((now - 5) * 1000),
            "later": int((now + 600) * 1000),
        },
    )
    depth, oldest, interactive, interactive_oldest, _ = gauges()
    assert (depth, interactive) == (42, 2) and 19 <= interactive_oldest <= 30 and oldest > 3500
