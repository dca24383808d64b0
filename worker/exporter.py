"""`llm-router exporter`: the queue-level gauges, read from Redis at each scrape, by one process.

Credits, queue depth, the oldest job's age, dead letters, today's spend and a paused queue
are facts about the shared Redis, not about a worker: exported by every worker they would
be summed into nonsense. Run one exporter per queue (it is in the Procfile).

Schedules (SCHEDULES_FILE, read at start without checking the input files): per configured
schedule, when its last batch completed (and its output was written), and how far overdue it
is: the latest tick whose completion window has ended must have a completed batch.
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

from . import budgets
from .batches import STATUSES
from .keys import BATCHES, CREDITS, DLQ, GATE, batch_key, bulk_key, schedule_key, schedule_output_key, spend_day_key
from .metrics import Labels
from .schedules import Schedule
from .schedules import load as load_schedules
from .settings import Settings

log = logging.getLogger("llm_router.exporter")
# The newest batches the exporter reads the status of at each scrape.
MAX_BATCHES_READ = 10_000


class QueueCollector(Collector):
    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis or Redis.from_url(settings.redis_url, socket_timeout=5)
        self.labels = Labels(settings)
        self.schedules = load_schedules(settings, check_files=False)

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
        if self.schedules:
            yield from self._schedules(now)
        yield from budgets.families(self.redis, self.settings, now)

    def _schedules(self, now: float) -> Iterator[GaugeMetricFamily]:
        # per schedule: the latest tick whose window has ended, and the batch it must have completed
        due: list[tuple[Schedule, float, str]] = []
        for s in self.schedules:
            tick = s.latest_tick(now - s.window_s)
            due.append((s, tick.timestamp(), s.batch_id(tick)))
        with self.redis.pipeline(transaction=False) as pipe:
            for s, _at, batch_id in due:
                pipe.hmget(schedule_key(s.name), ["last_success", "since"])
                pipe.hget(batch_key(batch_id), "status")
                pipe.get(schedule_output_key(batch_id))
            read = pipe.execute()
        success = GaugeMetricFamily(
            "llm_router_schedule_last_success_timestamp_seconds",
            "When the schedule's last batch completed (and its output was written); absent before the first",
            labels=["schedule"],
        )
        overdue = GaugeMetricFamily(
            "llm_router_schedule_overdue_seconds",
            "Seconds the batch of the latest tick past its window has not completed (0: on time)",
            labels=["schedule"],
        )
        for i, (s, at, _batch_id) in enumerate(due):
            (last_success, since), status, marker = read[3 * i], read[3 * i + 1], read[3 * i + 2]
            if last_success is not None:
                success.add_metric([s.name], float(last_success))
            deadline = at + s.window_s
            late = 0.0
            # ticks before a worker first applied the schedule are not owed
            if since is not None and at >= float(since):
                ok = status == b"completed" and marker == b"done"
                late = 0.0 if ok else max(now - deadline, 0.0)
            overdue.add_metric([s.name], late)
        yield success
        yield overdue


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
