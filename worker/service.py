"""The arq wiring: worker settings, start-up and shut-down of the shared resources in `ctx`."""

from __future__ import annotations

import logging
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func

from . import jobs, serde
from .client import AIsaClient
from .settings import ConfigError, Settings, exit_on_config_error, load_settings
from .store import ResultStore

log = logging.getLogger("llm_router.worker")


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    ctx["client"] = AIsaClient(
        settings.aisa_base_url,
        settings.api_key(),
        timeout=settings.request_timeout_s,
        connect_timeout=settings.connect_timeout_s,
        # a compare job fans out: leave room for several calls per running job
        max_connections=settings.worker_concurrency * 4,
    )
    ctx["store"] = ResultStore(ctx["redis"], settings.result_ttl_s)
    ctx["prices"] = settings.prices
    log.info("llm-router worker up: gateway %s, queue %s, concurrency %d",
             settings.aisa_base_url, settings.queue_name, settings.worker_concurrency)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "client" in ctx:
        await ctx["client"].aclose()


def worker_kwargs(settings: Settings) -> dict[str, Any]:
    """Everything arq's Worker takes, from our settings. Checks the API key first."""
    settings.api_key()
    return {
        # keep_result=0: our own JSON JobResult (worker.store) is the result; arq's would duplicate it.
        "functions": [func(f, name=f.__name__, keep_result=0) for f in (jobs.chat, jobs.vision, jobs.compare)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": settings},
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_concurrency,
        "job_timeout": settings.job_timeout_s,
        "keep_result": 0,
        # arq sleeps poll_delay between queue polls even when busy: 0.5 s (its default) caps a
        # worker at max_jobs / 0.5 jobs/s.
        "poll_delay": settings.poll_delay_s,
        "job_serializer": serde.dumps,
        "job_deserializer": serde.loads,
    }


def create_worker(settings: Settings, **overrides: Any) -> Worker:
    return Worker(**{**worker_kwargs(settings), **overrides})


def settings_class() -> type:
    """`WorkerSettings` for `arq worker.WorkerSettings`, read from the environment."""
    try:
        kwargs = worker_kwargs(load_settings())
    except ConfigError as exc:
        exit_on_config_error(exc)
    return type("WorkerSettings", (), kwargs)
