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
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from redis import Redis
from redis.exceptions import RedisError

from ..batches.record import STATUSES
from ..batches.schedules import Schedule
from ..batches.schedules import load as load_schedules
from ..contract.connections import sync_redis
from ..contract.keys import (
    BATCHES,
    CREDITS,
    DLQ,
    GATE,
    batch_key,
    bulk_key,
    schedule_key,
    schedule_output_key,
    spend_by_key,
    spend_day_key,
    worker_config_key,
    workers_key,
)
from ..contract.settings import ConfigError, Settings
from ..limits import budgets, fair
from ..lua import registry as lua
from ..process.lease import HEARTBEAT_STALE_S
from .metrics import Labels

log = logging.getLogger("llm_router.exporter")
# The ready jobs the exporter looks at, oldest first, to tell batch lines from interactive jobs,
# in chunks (one script call each: Redis is never held for long).
MAX_READY_SCANNED = 50_000
READY_CHUNK = 5_000

# The newest batches the exporter reads the status of at each scrape.
MAX_BATCHES_READ = 10_000


class QueueCollector(Collector):
    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis or sync_redis(settings.redis_url, socket_timeout=5)
        self.labels = Labels(settings)
        self.schedules = load_schedules(settings, check_files=False)
        self._interactive = lua.register(self.redis, "exporter_interactive")
        self._fair_depth = lua.register(self.redis, "fair_depth")  # worker.limits.fair's
        # the sources reported even with nothing waiting or running (the ones the settings name)
        self._sources = sorted(set(settings.source_weights) | set(settings.source_limits))

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
            pipe.zrangebyscore(workers_key(queue), now - HEARTBEAT_STALE_S, "+inf")
            pipe.hgetall(spend_by_key("source", day(now)))
            for d in month_days(now):
                pipe.hgetall(spend_day_key(d))
            credits, ready, total, oldest, dead, today, gate, bulk, batch_ids, live, sources, *month = pipe.execute()
        with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in batch_ids:
                pipe.hget(batch_key(batch_id.decode()), "status")
            if live:
                pipe.mget([worker_config_key(w.decode()) for w in live])
            read = pipe.execute() if batch_ids or live else []
        statuses = read[: len(batch_ids)]
        digests = {d for d in (read[-1] if live else []) if d is not None}
        batch_lines, oldest_interactive = self._batch_lines(queue, int(now * 1000), ready)
        by_source = self._by_source(queue, now)
        # jobs waiting in the sources' sub-queues (worker.limits.fair) are ready interactive jobs too
        fair_waiting = sum(d.waiting for d in by_source)
        fronts = [d.front_ms for d in by_source if d.front_ms is not None and d.front_ms <= now * 1000]
        if fronts:
            oldest = [(b"", min([oldest[0][1], *fronts] if oldest else fronts))]
            oldest_interactive = min([f for f in [oldest_interactive, *fronts] if f >= 0])
        ready, total = ready + fair_waiting, total + fair_waiting

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
        yield _gauge(
            "llm_router_queue_interactive_depth",
            "Jobs waiting to run now that are not batch lines (what the backlog alert watches)",
            ready - int(batch_lines),
        )
        yield _gauge(
            "llm_router_queue_interactive_oldest_job_age_seconds",
            "How long the oldest ready job that is not a batch line has waited",
            max(now - oldest_interactive / 1000, 0.0) if oldest_interactive >= 0 else 0.0,
        )
        yield _gauge("llm_router_dead_letters", "Jobs in the dead-letter list", dead)
        yield _gauge("llm_router_workers_live", "Workers that beat on this queue in the last 5 s", len(live))
        yield _gauge(
            "llm_router_config_digests",
            "Distinct configuration digests among the live workers (1: they agree; see `llm-router fleet`)",
            len(digests),
        )
        yield _gauge("llm_router_bulk_depth", "Bulk jobs (batch lines) waiting in the bulk lane", bulk)
        yield from self._source_families(by_source, now)
        yield self._by("llm_router_spend_today_usd", "USD spent this UTC day (from Redis)", "model", [today])
        yield self._by(
            "llm_router_spend_today_by_source_usd", "USD spent this UTC day by source (from Redis)", "source", [sources]
        )
        yield self._by(
            "llm_router_spend_month_usd", "USD spent this UTC month to date, by model (from Redis)", "model", month
        )
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

    def _by_source(self, queue: str, now: float) -> list[fair.SourceDepth]:
        """What waits and runs, by source (worker.limits.fair): the sources with jobs waiting and the named ones."""
        out = self._fair_depth(
            keys=[fair.passes_key(queue)],
            args=[int(now * 1000), fair.waiting_key(queue, ""), fair.running_key(queue, ""), *self._sources],
        )
        return fair.parse_depths(out)

    def _source_families(self, by_source: list[fair.SourceDepth], now: float) -> Iterator[GaugeMetricFamily]:
        """Per-source gauges; the label values are the bounded sources (worker.limits.fair)."""
        waiting = GaugeMetricFamily(
            "llm_router_source_waiting", "Jobs waiting in the source's sub-queue (fair share)", labels=["source"]
        )
        running = GaugeMetricFamily(
            "llm_router_source_running", "Jobs of the source running now (fair share)", labels=["source"]
        )
        age = GaugeMetricFamily(
            "llm_router_source_oldest_wait_seconds",
            "How long the front job of the source's sub-queue has waited (0: none waits)",
            labels=["source"],
        )
        for d in by_source:
            waiting.add_metric([d.source], d.waiting)
            running.add_metric([d.source], d.running)
            front = d.front_ms / 1000 if d.front_ms is not None else now
            age.add_metric([d.source], max(now - front, 0.0))
        yield waiting
        yield running
        yield age

    def _batch_lines(self, queue: str, now_ms: int, ready: int) -> tuple[int, float]:
        """Batch lines among the `ready` jobs (the oldest MAX_READY_SCANNED), and the score of
        the oldest ready job that is not one (-1: none)."""
        lines, oldest = 0, -1.0
        for start in range(0, min(ready, MAX_READY_SCANNED), READY_CHUNK):
            found, first = self._interactive(keys=[queue], args=[now_ms, start, start + READY_CHUNK - 1])
            lines += int(found)
            if oldest < 0:
                oldest = float(first)
        return lines, oldest

    def _by(self, name: str, documentation: str, label: str, days: list[dict[bytes, bytes]]) -> GaugeMetricFamily:
        """A spend gauge from per-day hashes name -> USD, summed over `days`, by bounded label value."""
        bounded = self.labels.model if label == "model" else self.labels.source
        totals: dict[str, float] = {}
        for hash_ in days:
            for raw, usd in hash_.items():
                value = bounded(raw.decode())
                totals[value] = totals.get(value, 0.0) + float(usd)
        family = GaugeMetricFamily(name, documentation, labels=[label])
        for value, total in sorted(totals.items()):
            family.add_metric([value], total)
        return family

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


def day(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


def month_days(at: float) -> list[str]:
    """The UTC days of `at`'s month up to its day, as the spend records name them."""
    now = datetime.fromtimestamp(at, UTC)
    return [now.replace(day=d).strftime("%Y-%m-%d") for d in range(1, now.day + 1)]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def registry(settings: Settings) -> CollectorRegistry:
    """What the exporter serves: its queue gauges and its own process's, never the worker's
    counters (worker.observe.metrics defines them on the default registry when imported; here they
    would only ever read 0, beside the workers' real ones)."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    own = CollectorRegistry(auto_describe=True)
    for collector in (QueueCollector(settings), PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        own.register(collector)
    return own


def serve(settings: Settings, host: str = "0.0.0.0", port: int | None = None) -> None:
    """Serve the gauges on `host`:`port` (EXPORTER_PORT by default) until interrupted."""
    from prometheus_client import start_http_server

    port = settings.exporter_port if port is None else port
    try:
        start_http_server(port, addr=host, registry=registry(settings))
    except OSError as exc:
        raise ConfigError(
            f"EXPORTER_PORT: cannot serve /metrics on {host}:{port} ({exc.strerror or exc}):"
            " another process has it; give --port (or set EXPORTER_PORT to) a free port"
        ) from None
    log.info("llm-router exporter on http://%s:%d/metrics (queue %s)", host, port, settings.queue_name)
    while True:
        time.sleep(3600)
