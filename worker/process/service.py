"""The arq wiring: the worker's settings for arq, the shared resources built at start-up,
the keeper task that renews leases, beats the heartbeat and watches the gate, the
scheduler task that fires the schedules of SCHEDULES_FILE (worker.batches.schedules), and the
webhook sender (worker.outputs.webhooks).

`arq worker.WorkerSettings` runs arq's own Worker from the same settings; `llm-router worker`
runs RouterWorker (worker.process.runner), which adds the batched claim and stops picking jobs while
the queue is paused (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from typing import Any

from arq.connections import RedisSettings
from arq.worker import func
from redis.commands.core import AsyncScript

from ..batches import schedules
from ..batches.store import BatchStore
from ..calls import jobs
from ..calls.cache import ResponseCache
from ..calls.client import AIsaClient
from ..contract import connections, routes, serde
from ..contract.records import JobRecords
from ..contract.settings import ConfigError, Settings, exit_on_config_error, load_settings
from ..contract.store import ResultStore
from ..limits.fair import FairQueue
from ..limits.gate import Gate
from ..limits.limiter import Limiter
from ..observe.metrics import Labels, serve_metrics
from ..outputs import webhooks
from . import logs, preflight, scripts
from .fleet import FleetConfig
from .health import HEALTH
from .lease import Lease
from .quarantine import Quarantine
from .resources import Resources
from .runner import RouterWorker

log = logging.getLogger("llm_router.worker")
# How long a stopping worker tries to withdraw its heartbeat and config digest (worker.process.fleet).
WITHDRAW_S = 2.0


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    logs.guard()  # also under `arq worker.WorkerSettings`, whose CLI configures its own handlers
    redis = ctx["redis"]
    client = AIsaClient(
        settings.aisa_base_url,
        settings.api_key(),
        timeout=settings.request_timeout_s,
        connect_timeout=settings.connect_timeout_s,
        # a compare job fans out: leave room for several calls per running job
        max_connections=settings.worker_concurrency * 4,
    )
    resources = Resources(
        settings=settings,
        client=client,
        store=ResultStore(
            redis, settings.result_ttl_s, settings.dlq_max, settings.dlq_ttl_s, settings.spend_retention_days * 86400
        ),
        limiter=Limiter(redis, settings),
        gate=Gate(redis, settings.probe_interval_s),
        labels=Labels(settings),
        quarantine=Quarantine(redis, settings.queue_name, settings.quarantine_max),
        cache=ResponseCache(redis, settings),
        lease=(
            lease := Lease(
                redis, settings.queue_name, settings.lease_s, FairQueue(redis, settings, settings.queue_name)
            )
        ),
    )
    ctx["resources"] = resources
    await scripts.preload(redis, job_path_scripts(resources))
    scripts.batch_calls(redis)  # the jobs' script calls of one event-loop turn: one round trip
    serve_metrics(settings.metrics_port)
    ctx["fleet"], ctx["worker_id"] = FleetConfig(redis, settings), uuid.uuid4().hex[:12]
    if ctx.get("feed_fair") and lease.fair is not None:  # arq's own Worker: see keeper
        await lease.fair.feed(settings.worker_concurrency, int(time.time() * 1000))
    ctx["keeper"] = asyncio.create_task(
        keeper(resources, lease, ctx["fleet"], ctx["worker_id"], feed=bool(ctx.get("feed_fair"))),
        name="llm-router-keeper",
    )
    ctx["gateway_check"] = asyncio.create_task(
        preflight.check_gateway(client, settings.aisa_base_url, log), name="llm-router-gateway-check"
    )
    ctx["webhooks"] = asyncio.create_task(webhooks.Sender(redis, settings).run(), name="llm-router-webhooks")
    if ctx.get("schedules"):  # the schedules' batches, on a connection of their own
        ctx["schedule_redis"] = schedule_redis = connections.async_redis(settings.redis_url)
        store = BatchStore(JobRecords(schedule_redis, settings))
        ctx["scheduler"] = asyncio.create_task(
            schedules.Scheduler(store, ctx["schedules"]).run(), name="llm-router-scheduler"
        )
    log.info(
        "llm-router worker up: gateway %s, queue %s, concurrency %d",
        settings.aisa_base_url,
        settings.queue_name,
        settings.worker_concurrency,
    )


def job_path_scripts(resources: Resources) -> list[AsyncScript]:
    """The Lua scripts every job runs (claim, admission, call log, settle, save, release), and
    the response cache's lookup and store (cacheable calls)."""
    store, limiter, cache = resources.store, resources.limiter, resources.cache
    lease = resources.lease.scripts if resources.lease else []
    return [*lease, *limiter.scripts, *store.scripts, *cache.scripts]


def outcome_line(outcomes: Counter[str]) -> str:
    """This process's jobs by how they ended, after arq's shutdown line (whose `failed` counts
    only records arq could not run: a job that failed upstream and was dead-lettered is a
    `complete` job there)."""
    known = ("succeeded", "failed", "dead_lettered", "requeued")
    said = [
        f"{outcomes['succeeded']} succeeded",
        f"{outcomes['failed']} failed ({outcomes['dead_lettered']} dead-lettered)",
        *(f"{n} {status}" for status, n in sorted(outcomes.items()) if status not in known and n),
        f"{outcomes['requeued']} requeued",
    ]
    return "jobs of this worker: " + ", ".join(said)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "resources" in ctx:
        log.info(outcome_line(ctx["resources"].outcomes))
    for task in ("gateway_check", "scheduler", "webhooks", "keeper"):
        if task in ctx:
            ctx[task].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ctx[task]
    if "fleet" in ctx:  # bounded: a Redis outage must not hold the exit for the retries' minute
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ctx["fleet"].withdraw(ctx["worker_id"]), WITHDRAW_S)
    await scripts.release_held(ctx.get("redis"))  # before the worker closes its pool
    if "schedule_redis" in ctx:
        await ctx["schedule_redis"].aclose()
    if "resources" in ctx:
        await ctx["resources"].client.aclose()


async def keeper(resources: Resources, lease: Lease, fleet: FleetConfig, worker_id: str, feed: bool = False) -> None:
    """Renew the leases of this worker's running jobs, beat, publish the config digest, and
    read the gate (and, under arq's own Worker, `feed`: move jobs from the sources' sub-queues to
    the queue, worker.limits.fair); while it is closed, probe it in a task of its own (a probe may take
    REQUEST_TIMEOUT_S, far past a lease). Each tick feeds the probes (worker.process.health): it comes
    every period even while a tick's Redis work hangs in the client's retries through an
    outage (worker.contract.connections), so a Redis outage never fails liveness; the next Redis work
    starts when the last one ended."""
    period = min(resources.settings.lease_s / 3, 1.0)
    probing: asyncio.Task[Any] | None = None
    compared = False

    async def on_redis() -> None:
        nonlocal probing, compared
        try:
            await lease.renew(resources.running)
            if not resources.settings.fair_share and lease.fair is not None:  # leftovers to drain?
                resources.fair_leftovers = await lease.fair.any_waiting()
            if feed and lease.fair is not None:
                await lease.fair.feed(resources.settings.worker_concurrency, int(time.time() * 1000))
            await resources.limiter.budgets.keep()  # worker.limits.budgets: this process's reservations
            await lease.beat(worker_id)
            await fleet.publish(worker_id)
            if not compared:
                compared = True
                await warn_if_peers_differ(fleet)
            resources.paused = await resources.gate.read()
            HEALTH.redis_ok()
            if resources.paused is not None and (probing is None or probing.done()):
                probing = asyncio.create_task(resources.gate.watch(resources), name="llm-router-probe")
        except Exception:
            log.exception("keeper: will retry")

    work: asyncio.Task[None] | None = None
    try:
        while True:
            if work is None or work.done():
                work = asyncio.create_task(on_redis(), name="llm-router-keeper-redis")
            await asyncio.wait({work}, timeout=period)
            HEALTH.tick()
            await asyncio.sleep(period)
    finally:
        for task in (work, probing):
            if task is not None:
                task.cancel()


async def warn_if_peers_differ(fleet: FleetConfig) -> None:
    """Once, at start-up: say which settings this worker runs differently from its live peers."""
    others = await fleet.disagreement()
    for other, names in others.items():
        log.warning(
            "config digest %s differs from live workers' %s in %s: every worker of a queue must run the same"
            " settings (see `llm-router fleet`)",
            fleet.digest,
            other,
            ", ".join(names),
        )
    if not others:
        log.info("config digest %s (as every live worker of the queue)", fleet.digest)


def redis_settings(settings: Settings) -> RedisSettings:
    """Ride out a Redis restart or failover: retry commands on connection errors for about a
    minute (REDIS_URL: redis://, rediss:// or redis+sentinel://, worker.contract.connections)."""
    return connections.arq_settings(settings.redis_url)


def worker_kwargs(settings: Settings) -> dict[str, Any]:
    """Everything arq's Worker takes, from our settings. Checks the API key, the routes and the
    schedules first (a ConfigError: the worker exits 2 with one line)."""
    settings.api_key()
    webhooks.check_settings(settings)
    routes.check(settings)
    return {
        # keep_result=0: our own JSON JobResult (worker.contract.store) is the result; arq's would duplicate it.
        "functions": [func(f, name=name, keep_result=0) for name, f in jobs.functions().items()],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": settings, "schedules": schedules.load(settings)},
        "redis_settings": redis_settings(settings),
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_concurrency,
        # the job enforces JOB_TIMEOUT_S itself (and stores a failed result); arq's is a backstop
        "job_timeout": settings.job_timeout_s + 30,
        "keep_result": 0,
        # we dead-letter at MAX_JOB_RUNS (as `abandoned`, whatever run count a record claims);
        # arq must never drop a job silently ("max retries exceeded") before that
        "max_tries": serde.MAX_RECORD_TRIES + settings.max_job_runs + 1,
        # SIGTERM: stop picking, give running jobs the grace, then cancel them back to the queue
        "job_completion_wait": settings.shutdown_grace_s,
        # arq sleeps poll_delay between queue polls even when busy: 0.5 s (its default) caps a
        # worker at max_jobs / 0.5 jobs/s.
        "poll_delay": settings.poll_delay_s,
        "job_serializer": serde.dumps,
        "job_deserializer": serde.loads,
    }


def create_worker(settings: Settings, **overrides: Any) -> RouterWorker:
    kwargs = {**worker_kwargs(settings), **sentinel_pool(settings)}
    return RouterWorker(**{**kwargs, "lease_s": settings.lease_s, **overrides})


def sentinel_pool(settings: Settings) -> dict[str, Any]:
    """For a Sentinel URL, `redis_pool`: our pool, which retries through a failover (arq's own
    passes no retry options to Sentinel's connections); nothing for other URLs."""
    pool = connections.arq_pool(settings.redis_url)
    if pool is None:
        return {}
    pool.job_serializer, pool.job_deserializer = serde.dumps, serde.loads
    pool.default_queue_name = settings.queue_name
    return {"redis_pool": pool}


def settings_class() -> type:
    """`WorkerSettings` for `arq worker.WorkerSettings`, read from the environment, once Redis
    answers (worker.process.preflight: what is wrong with it is said at once).

    arq builds its own Worker from it: the keeper still renews leases (so the recovery bound
    holds once a job has run a second) and jobs still defer while the queue is paused."""
    try:
        settings = load_settings()
        kwargs = worker_kwargs(settings)
        kwargs["ctx"]["feed_fair"] = True  # arq's Worker reads only the queue (see keeper)
        preflight.wait_for_redis(settings.redis_url, log)
    except ConfigError as exc:
        exit_on_config_error(exc)
    return type("WorkerSettings", (), {**kwargs, **sentinel_pool(settings)})
