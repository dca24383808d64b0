"""`llm-router exporter`: the queue-level gauges, read from Redis at each scrape, by one process.

Credits, queue depth, the oldest job's age, dead letters, today's spend and a paused queue
are facts about the shared Redis, not about a worker: exported by every worker they would
be summed into nonsense. Run one exporter per queue (it is in the Procfile).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from redis import Redis
from redis.exceptions import RedisError

from .batches import STATUSES
from .keys import BATCHES, CREDITS, DLQ, GATE, batch_key, bulk_key, spend_day_key
from .metrics import Labels
from .settings import Settings

log = logging.getLogger("llm_router.exporter")
# The newest batches the exporter reads the status of at each scrape.
MAX_BATCHES_READ = 10_000


class QueueCollector(Collector):
    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis or Redis.from_url(settings.redis_url, socket_timeout=5)
        self.labels = Labels(settings)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("llm_router_exporter_redis_up", "1 if the exporter could read Redis")
        try:
            families = list(self._read())
        except RedisError as exc:
            log.warning("cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        queue = self.settings.queue_name
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(CREDITS)
            pipe.zcount(queue, "-inf", int(now * 1000))
            pipe.zcard(queue)
            pipe.zrangebyscore(queue, "-inf", int(now * 1000), start=0, num=1, withscores=True)
            pipe.hlen(DLQ)
            pipe.hgetall(spend_day_key())
            pipe.get(GATE)
            pipe.zcard(bulk_key(queue))
            pipe.zrevrange(BATCHES, 0, MAX_BATCHES_READ - 1)
            credits, ready, total, oldest, dead, today, gate, bulk, batch_ids = pipe.execute()
        with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in batch_ids:
                pipe.hget(batch_key(batch_id.decode()), "status")
            statuses = pipe.execute() if batch_ids else []

        if credits.get(b"remaining") is not None:
            yield _gauge(
                "llm_router_credits_remaining_usd",
                "Credits left, as AIsa last reported (USD)",
                float(credits[b"remaining"]),
            )
            yield _gauge(
                "llm_router_credits_updated_timestamp_seconds",
                "When AIsa last reported the credits",
                float(credits.get(b"updated_at") or 0),
            )
        yield _gauge("llm_router_queue_depth", "Jobs waiting to run now", ready)
        yield _gauge("llm_router_queue_scheduled", "Jobs sent back to the queue for later (deferred)", total - ready)
        yield _gauge(
            "llm_router_queue_oldest_job_age_seconds",
            "How long the oldest ready job has waited",
            max(now - oldest[0][1] / 1000, 0.0) if oldest else 0.0,
        )
        yield _gauge("llm_router_dead_letters", "Jobs in the dead-letter list", dead)
        yield _gauge("llm_router_bulk_depth", "Bulk jobs (batch lines) waiting in the bulk lane", bulk)
        spend = GaugeMetricFamily("llm_router_spend_today_usd", "USD spent this UTC day (from Redis)", labels=["model"])
        by_model: dict[str, float] = {}
        for model, usd in today.items():
            label = self.labels.model(model.decode())
            by_model[label] = by_model.get(label, 0.0) + float(usd)
        for label, usd in sorted(by_model.items()):
            spend.add_metric([label], usd)
        yield spend
        paused = GaugeMetricFamily(
            "llm_router_queue_paused", "1 while the queue is paused (401/402)", labels=["reason"]
        )
        reason = json.loads(gate).get("reason") if gate else None
        for r in ("auth", "credits"):
            paused.add_metric([r], 1.0 if reason == r else 0.0)
        yield paused
        batches = GaugeMetricFamily(
            "llm_router_batches", "Batches kept in Redis, by status (the newest 10,000)", labels=["status"]
        )
        for status in STATUSES:
            batches.add_metric([status], float(statuses.count(status.encode())))
        yield batches


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def serve(settings: Settings) -> None:
    """Serve the gauges on EXPORTER_PORT until interrupted."""
    from prometheus_client import start_http_server

    REGISTRY.register(QueueCollector(settings))
    start_http_server(settings.exporter_port)
    log.info("llm-router exporter on http://0.0.0.0:%d/metrics (queue %s)", settings.exporter_port, settings.queue_name)
    while True:
        time.sleep(3600)
