"""The arq wiring: worker settings, the shared resources in `ctx`, and what arq does not do
for us: a heartbeat lease on running jobs, and a paused queue (401/402) that probes the
gateway until it can resume.

Recovery bound: arq marks a job in progress for the longest job timeout + 10 s, so a job
of a SIGKILLed worker would wait that long. Here the mark is a lease of LEASE_S that the
worker renews every LEASE_S/3 s while the job runs: another worker starts it again
within LEASE_S (+ one poll) of the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from signal import Signals
from typing import Any

from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from prometheus_client import start_http_server
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import errors, jobs, serde
from .client import AIsaClient
from .limiter import Limiter
from .metrics import Labels
from .routing import Call, call_once
from .settings import ConfigError, Settings, exit_on_config_error, load_settings
from .store import ResultStore

log = logging.getLogger("llm_router.worker")

PROBE_LOCK = "llm-router:gate:probe"


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
    ctx["limiter"] = Limiter(ctx["redis"], settings)
    ctx["prices"] = settings.prices
    ctx["labels"] = Labels(settings)
    serve_metrics(settings.metrics_port)
    ctx["running"] = set()
    ctx["gate"] = None
    ctx["keeper"] = asyncio.create_task(keeper(ctx), name="llm-router-keeper")
    log.info("llm-router worker up: gateway %s, queue %s, concurrency %d",
             settings.aisa_base_url, settings.queue_name, settings.worker_concurrency)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "keeper" in ctx:
        ctx["keeper"].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ctx["keeper"]
    if "client" in ctx:
        await ctx["client"].aclose()


async def keeper(ctx: dict[str, Any]) -> None:
    """Renew the leases of this worker's running jobs; watch the queue gate and probe it."""
    settings: Settings = ctx["settings"]
    period = min(settings.lease_s / 3, 1.0)
    while True:
        try:
            await renew_leases(ctx["redis"], ctx["running"], settings.lease_s)
            ctx["gate"] = await ctx["limiter"].gate()
            if ctx["gate"] is not None:
                await maybe_probe(ctx, ctx["gate"])
        except Exception:  # noqa: BLE001 - Redis restarting: keep trying, never die
            log.exception("keeper: will retry")
        await asyncio.sleep(period)


async def renew_leases(redis: Any, running: set[str], lease_s: float) -> None:
    if not running:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in list(running):
            pipe.pexpire(in_progress_key_prefix + job_id, int(lease_s * 1000))
        await pipe.execute()


async def maybe_probe(ctx: dict[str, Any], gate: dict[str, Any]) -> None:
    """One worker per PROBE_INTERVAL_S asks the gateway whether the pause can end."""
    settings: Settings = ctx["settings"]
    if not await ctx["redis"].set(PROBE_LOCK, "1", nx=True, px=int(settings.probe_interval_s * 1000)):
        return
    if await probe(ctx, gate):
        await ctx["limiter"].open_gate()
        ctx["gate"] = None
        log.warning("queue resumed: the gateway accepts calls again (was paused for %s)", gate.get("reason"))
    else:
        log.warning("queue still paused (%s): %s", gate.get("reason"), gate.get("message"))


async def probe(ctx: dict[str, Any], gate: dict[str, Any]) -> bool:
    """401: the key works again if GET /models passes (free). 402: only a real call can tell:
    one token from the model that ran out, recorded and charged like any other call."""
    client: AIsaClient = ctx["client"]
    try:
        if gate.get("reason") != "credits":
            await client.models()
            return True
    except errors.AIsaError:
        return False
    model = gate.get("model") or "gpt-4o-mini"
    call = Call(ctx, "_probe", {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}, max_wait_s=0,
                kind="probe")
    _, exc = await call_once(call, model, {**call.payload, "model": model}, tokens=0, waited=0.0)
    return exc is None


_serving: set[int] = set()


def serve_metrics(port: int) -> None:
    """This process's /metrics, once per process; a busy port is logged, not fatal."""
    if not port or port in _serving:
        return
    try:
        start_http_server(port)
    except OSError as exc:
        log.error("metrics: cannot serve on port %d (%s): set METRICS_PORT to a free port, or 0", port, exc)
        return
    _serving.add(port)
    log.info("metrics on http://0.0.0.0:%d/metrics", port)


# arq's claim of one job, atomically, for a batch: not in progress elsewhere, due now.
# KEYS: queue, in-progress key per job; ARGV: now ms, lease ms, job ids (in KEYS order)
_CLAIM = """
local now, lease, claimed = tonumber(ARGV[1]), ARGV[2], {}
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  if redis.call('EXISTS', KEYS[i]) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('PSETEX', KEYS[i], lease, '1')
      table.insert(claimed, id)
      table.insert(claimed, score)
    end
  end
end
return claimed
"""


class RouterWorker(Worker):
    """arq's Worker with a short lease on running jobs (renewed by `keeper`), no picking of
    jobs while the queue is paused or draining, and one round trip to claim a batch of jobs."""

    def __init__(self, *args: Any, lease_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = lease_s  # arq: longest job timeout + 10 s
        self._draining = False
        self._claim: Any = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq claims each job with WATCH, EXISTS, ZSCORE and MULTI/PSETEX/EXEC: four round
        trips per job, one job after another, inside the poll loop. The same checks in one Lua
        call for as many jobs as there are free slots (the rest wait for the next poll):
        measured 1.6x arq's no-op job rate."""
        ids = [j.decode() for j in job_ids][: max(self.max_jobs - self.job_counter, 0)]
        if not ids:
            return
        if self._claim is None:
            self._claim = self.pool.register_script(_CLAIM)
        claimed = await self._claim(keys=[self.queue_name, *(in_progress_key_prefix + i for i in ids)],
                                    args=[timestamp_ms(), int(self.in_progress_timeout_s * 1000), *ids])
        for raw_id, score in zip(claimed[::2], claimed[1::2]):
            await self.sem.acquire()  # free: no more ids than slots
            self.job_counter += 1
            job_id = raw_id.decode()
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _poll_iteration(self) -> None:
        self.allow_pick_jobs = not self._draining and self.ctx.get("gate") is None
        await super()._poll_iteration()

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        self._draining = True
        super().handle_sig_wait_for_completion(signum)


def redis_settings(settings: Settings) -> RedisSettings:
    """Ride out a Redis restart: retry commands on connection errors for about a minute."""
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_retries = 30
    rs.retry_on_error = [RedisConnectionError, RedisTimeoutError, ConnectionRefusedError]
    rs.retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=40)
    return rs


def worker_kwargs(settings: Settings) -> dict[str, Any]:
    """Everything arq's Worker takes, from our settings. Checks the API key first."""
    settings.api_key()
    return {
        # keep_result=0: our own JSON JobResult (worker.store) is the result; arq's would duplicate it.
        "functions": [func(f, name=f.__name__, keep_result=0)
                      for f in (jobs.chat, jobs.vision, jobs.compare, jobs.invalid)],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": settings},
        "redis_settings": redis_settings(settings),
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_concurrency,
        # the job enforces JOB_TIMEOUT_S itself (and stores a failed result); arq's is a backstop
        "job_timeout": settings.job_timeout_s + 30,
        "keep_result": 0,
        # we dead-letter at MAX_JOB_RUNS; arq must not drop the job silently before that
        "max_tries": settings.max_job_runs + 1,
        # SIGTERM: stop picking, give running jobs the grace, then cancel them back to the queue
        "job_completion_wait": settings.shutdown_grace_s,
        # arq sleeps poll_delay between queue polls even when busy: 0.5 s (its default) caps a
        # worker at max_jobs / 0.5 jobs/s.
        "poll_delay": settings.poll_delay_s,
        "job_serializer": serde.dumps,
        "job_deserializer": serde.loads,
    }


def create_worker(settings: Settings, **overrides: Any) -> RouterWorker:
    return RouterWorker(**{**worker_kwargs(settings), "lease_s": settings.lease_s, **overrides})


def settings_class() -> type:
    """`WorkerSettings` for `arq worker.WorkerSettings`, read from the environment.

    arq builds its own Worker from it: the keeper still renews leases (so the recovery bound
    holds once a job has run a second) and jobs still defer while the queue is paused."""
    try:
        kwargs = worker_kwargs(load_settings())
    except ConfigError as exc:
        exit_on_config_error(exc)
    return type("WorkerSettings", (), kwargs)

