"""Prometheus metrics of a worker process, defined once, here, with their labels.

Each worker process serves its own `/metrics` (METRICS_PORT) and Prometheus scrapes every
one: counters and histograms are per process, so `sum()` over instances is exact however
many processes run, and a restarted process is a counter reset `rate()` already handles.
Nothing non-additive lives here: credits, queue depth, dead letters and today's spend are
read from Redis by the single `llm-router exporter` (worker/observe/exporter.py), so they are
reported once, never summed over copies.

Label values are bounded sets: models outside the configured ones are reported as `other`,
`source` is capped (METRIC_SOURCES, else the first few seen), error classes and job kinds
are fixed lists.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from ..batches.record import OUTCOMES
from ..contract import routes
from ..contract.settings import ConfigError, Settings
from ..process import health

log = logging.getLogger("llm_router.metrics")

OTHER = "other"

# From tens of milliseconds to minutes: LLM calls, queue waits.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

SPEND = Counter("llm_router_spend_usd", "USD spent on upstream calls, as billed", ["model", "kind", "source"])
TOKENS = Counter("llm_router_tokens", "Tokens used upstream", ["model", "direction"])
UPSTREAM_LATENCY = Histogram(
    "llm_router_upstream_request_duration_seconds",
    "Upstream call duration, every call (failed ones too)",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
TTFT = Histogram(
    "llm_router_time_to_first_token_seconds",
    "Streamed calls: time to the first token",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
JOB_DURATION = Histogram(
    "llm_router_job_duration_seconds", "From enqueue to stored result (queue wait + run)", ["kind"], buckets=JOB_BUCKETS
)
JOBS = Counter("llm_router_jobs", "Jobs finished or sent back to the queue", ["kind", "outcome"])
ERRORS = Counter("llm_router_upstream_errors", "Failed upstream calls", ["model", "error_class"])
RATE_LIMITED = Counter("llm_router_rate_limited", "429 answers from upstream", ["model"])
FALLBACKS = Counter("llm_router_fallbacks", "Moves from one model of a chain to the next", ["from_model", "to_model"])
RETRIES = Counter("llm_router_retries", "Calls repeated on the same model", ["model"])
RATE_LIMIT_WAIT = Histogram(
    "llm_router_rate_limit_wait_seconds",
    "Time a call waited for its slot in the shared rate limit (0 when none)",
    ["model"],
    buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CIRCUIT_OPENED = Counter(
    "llm_router_circuit_opened", "Times a model's circuit opened (every worker skips it)", ["model"]
)
QUARANTINE_REASONS = ("not_utf8", "bad_id")
QUARANTINED = Counter(
    "llm_router_quarantined",
    "Queue entries moved to the quarantine (an id that is not UTF-8 or outside the charset)",
    ["reason"],
)
for _reason in QUARANTINE_REASONS:  # every series exists from the start, so rate() and alerts see 0
    QUARANTINED.labels(_reason)
DEAD_LETTERS_DROPPED = Counter(
    "llm_router_dead_letters_dropped", "Dead letters dropped, oldest first, over DLQ_MAX or DLQ_TTL_S"
)
BATCH_LINES = Counter(
    "llm_router_batch_lines",
    "Batch lines counted in their batch, by how they ended",
    ["outcome"],
)
for _outcome in OUTCOMES:  # every series exists from the start
    BATCH_LINES.labels(_outcome)
# Budgets (worker.limits.budgets): `scope` is global/source/model/batch, `name` the configured key ('' for
# global and batch: batch ids are unbounded). Refusals are counted by the worker that refused; the
# limit/reserved/spent gauges are read from Redis by the exporter, so every process agrees.
BUDGET_SCOPES = ("global", "source", "model", "batch")
BUDGET_REFUSALS = Counter(
    "llm_router_budget_refusals", "Calls refused because their worst case did not fit a budget", ["scope", "name"]
)
BUDGET_GAUGES = {
    "limit": ("llm_router_budget_limit_usd", "A budget's limit (USD; daily ones for today in BUDGET_TZ)"),
    "reserved": ("llm_router_budget_reserved_usd", "USD reserved against a budget by calls in flight"),
    "spent": ("llm_router_budget_spent_usd", "USD spent against a budget (daily ones: today in BUDGET_TZ)"),
}
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed")
WEBHOOK_DELIVERIES = Counter(
    "llm_router_webhook_deliveries",
    "Webhook tries by outcome: delivered (2xx), retried (a failed try, tried again), failed (given up)",
    ["outcome"],
)
for _outcome in WEBHOOK_OUTCOMES:
    WEBHOOK_DELIVERIES.labels(_outcome)
# The response cache (worker.calls.cache) and routes (worker.contract.routes)
CACHE_HITS = Counter("llm_router_cache_hits", "Calls answered from the response cache (no upstream call)", ["model"])
CACHE_MISSES = Counter(
    "llm_router_cache_misses", "Cacheable calls not in the response cache (one upstream call each)", ["model"]
)
CACHE_SAVED = Counter(
    "llm_router_cache_saved_usd", "USD the response cache saved: the original cost of each answer it gave", ["model"]
)
ROUTE_CHOICES = Counter(
    "llm_router_route_choices",
    "Jobs that named a route, by the model that answered (none: no model did)",
    ["route", "model"],
)
IN_FLIGHT = Gauge("llm_router_upstream_in_flight", "Upstream calls in progress", ["model"])
# The HTTP ingress (producers/http/app.py): `route` is the route's template (`/v1/jobs/{job_id}`, or
# `other` for no route), `status_class` `2xx`...`5xx`: bounded whatever the clients send.
HTTP_REQUESTS = Counter(
    "llm_router_http_requests", "Requests the HTTP ingress answered", ["route", "method", "status_class"]
)
HTTP_DURATION = Histogram(
    "llm_router_http_request_duration_seconds",
    "HTTP ingress requests, from the first byte in to the last byte out (long-polls included)",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
# The ingress's connections (producers/http/conns.py): held now, and those it closed, by why:
# `header_timeout`, `body_timeout`, `headers_too_large`, `shed` (to make room), `overloaded`
# (answered 503: every connection busy), `refused` (no room at all).
HTTP_CONNECTIONS = Gauge("llm_router_http_connections", "Connections the HTTP ingress holds")
HTTP_CLOSED = Counter(
    "llm_router_http_connections_closed", "Connections the HTTP ingress closed on a client, by reason", ["reason"]
)
# Long-polls (`?wait=`, chat completions) and live-stream readers the ingress holds.
HTTP_WAITING = Gauge("llm_router_http_waiting", "Result waits and stream readers the HTTP ingress holds")


M = TypeVar("M", Counter, Gauge, Histogram)
# The labelled children the job path asked for, by metric and label values (see `child`).
_CHILDREN: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, looked up once: prometheus_client's `labels` converts every value,
    takes a lock and builds a tuple on each call (the job path asks for about eight a job). The
    values are bounded sets (`Labels`), so this map stays small; a child is never removed."""
    key = (metric, values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return found


class Labels:
    """Maps raw names to bounded label values."""

    def __init__(self, settings: Settings, max_sources: int = 20) -> None:
        self.models = known_models(settings)
        self.sources: set[str] = set(settings.metric_sources)
        self._fixed_sources = bool(settings.metric_sources)
        self._max_sources = max_sources

    def model(self, name: str | None) -> str:
        return name if name in self.models else OTHER

    def source(self, name: str | None) -> str:
        if not name:
            return "none"
        if name in self.sources:
            return name
        if not self._fixed_sources and len(self.sources) < self._max_sources:
            self.sources.add(name)
            return name
        return OTHER


def known_models(settings: Settings) -> frozenset[str]:
    """METRIC_MODELS plus every model the configuration names."""
    names = set(settings.metric_models) | set(settings.default_fallbacks) | set(settings.rate_limits)
    names |= set(settings.prices) | set(settings.context_fallbacks) | set(settings.context_fallbacks.values())
    for model, chain in settings.fallbacks.items():
        names |= {model, *chain}
    for route in routes.table(settings).values():
        names |= route.all_models()
    return frozenset(names)


_serving: set[int] = set()


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """This process's /metrics (and its probes, worker.process.health) on `host`, once per process. A
    busy port is a ConfigError: a worker whose metrics nobody scrapes would spend unseen."""
    if not port or port in _serving:
        return
    try:
        health.serve(port, host)
    except OSError as exc:
        raise ConfigError(
            f"METRICS_PORT: cannot serve /metrics on port {port} ({exc.strerror or exc}): another process has it;"
            " give each worker process on a host its own METRICS_PORT or --port (0: no metrics)"
        ) from None
    _serving.add(port)
    log.info("metrics on http://%s:%d/metrics", host, port)
