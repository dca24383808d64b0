"""The arq job functions: one per registered job kind (worker.contract.models.JOB_KINDS), plus `invalid`.

Each takes the job as one JSON object, walks its fallback chain (worker.calls.routing) and stores a
`JobResult`. A job never raises for an upstream failure or a bad payload: the failure is the
result (and a dead letter), so producers always get an answer naming what went wrong. The
one exception is arq's `Retry`: a job that can only wait (rate limits, a paused queue) goes
back to the queue instead of holding a slot.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from arq.worker import Retry
from pydantic import ValidationError

from ..batches import record as batches
from ..contract import bounds, routes
from ..contract.models import (
    JOB_KINDS,
    CompareJob,
    ErrorInfo,
    JobBase,
    JobResult,
    ModelAnswer,
    RoutedJob,
    callback_of,
    describe_validation_error,
)
from ..contract.serde import INVALID
from ..observe import metrics as m
from ..outputs import events as ev
from ..outputs.dlq import dead_letter
from ..process.resources import Resources
from .call import Call, Deferred, QuotaDeferred, SlotGivenBack
from .policy import chain
from .routing import try_model, walk_chain

if TYPE_CHECKING:
    from ..contract.settings import Settings

log = logging.getLogger("llm_router.jobs")

Ctx = dict[str, Any]
JobFunction = Callable[..., Coroutine[Any, Any, str]]


def functions() -> dict[str, JobFunction]:
    """arq's function list: one per job kind, named after it, and `invalid`."""
    return {**{kind: _job_function(kind) for kind in JOB_KINDS}, INVALID: invalid}


def _job_function(kind: str) -> JobFunction:
    """`run_job` for `kind`: the job's own coroutine, not one awaiting it (a frame fewer to
    resume at every await of the job)."""
    return functools.partial(run_job, kind=kind)


async def invalid(ctx: Ctx, problem: str, record: str = "") -> str:
    """A job record arq could not read (see worker.contract.serde)."""
    status = await fail_record(ctx["resources"], ctx["job_id"], problem, record)
    _released(ctx)
    return status


def _released(ctx: Ctx) -> None:
    """Tell the worker (worker.process.runner) the job left the queue with its result: `finish` did it."""
    ctx["released"] = ctx["resources"].lease is not None


async def fail_record(resources: Resources, job_id: str, problem: str, record: str = "") -> str:
    """A record that cannot run: a failed `invalid_job` result naming the problem, and a dead
    letter keeping the start of the record."""
    result = failed_now(job_id, None, ErrorInfo(type="invalid_job", message=problem, field="job"))
    return await finish(resources, INVALID, record or problem, result)


def failed_now(job_id: str, kind: str | None, error: ErrorInfo, runs: int = 1) -> JobResult:
    """A job that ended as soon as it started, with `error`."""
    now = datetime.now(UTC)
    return JobResult(job_id=job_id, kind=kind, status="failed", runs=runs, started_at=now, finished_at=now, error=error)


async def run_job(ctx: Ctx, payload: Any, size: int = 0, *, kind: str) -> str:
    """Validate, call, store; returns the status (arq logs it). A job function: the job leaves
    the queue with its result (`finish`, `_released`)."""
    resources: Resources = ctx["resources"]
    job_id, run = ctx["job_id"], ctx.get("job_try") or 1
    resources.running.add(job_id)  # the keeper keeps this job's lease while it runs
    # a streaming job publishes its deltas live (worker.outputs.events)
    events = (
        ev.JobEvents(resources.store.redis, job_id, resources.settings, run)
        if ev.streams(kind, payload, resources.settings)
        else None
    )
    try:
        result = await _run(resources, kind, payload, job_id, run, ctx.get("enqueue_time"), size, events)
    except Retry:
        m.child(m.JOBS, kind, "requeued").inc()
        resources.outcomes["requeued"] += 1
        if events is not None:
            events.abandon()
        raise
    except Exception as exc:
        log.exception("job %s: failed inside the worker", job_id)
        result = failed_now(job_id, kind, ErrorInfo(type="internal", message=f"{type(exc).__name__}: {exc}"), run)
    finally:
        resources.running.discard(job_id)
    if run > 1:  # earlier runs' calls are in the call log
        result.attempts = await resources.store.attempts(job_id)
    costs = [a.cost for a in result.attempts if a.cost is not None]
    if costs:  # the job's cost is every call it paid for, fallbacks and earlier runs included
        result.cost = round(sum(costs), 10)
    if events is not None:  # before the result is stored: a reader that sees it finds this
        await events.close(result)
    status = await finish(resources, kind, payload, result)
    _released(ctx)
    return status


async def finish(resources: Resources, kind: str, payload: Any, result: JobResult) -> str:
    """Store the result (a failed one also as a dead letter, with its payload) and count it.
    A batch line's result is counted in its batch instead (worker.batches.record), once."""
    line = batches.line_of(result.job_id)
    if line is not None:
        counted = await batches.save_line(resources.store.redis, result, *line, batches.requested_model(payload))
        if counted >= 0:
            if counted:
                m.BATCH_LINES.labels(batches.outcome(result)).inc()
            if resources.lease is not None:
                await resources.lease.release(result.job_id)
            return _count(resources, kind, result)
    dead = None
    if result.status == "failed":
        dead = dead_letter(result, kind, payload, resources.settings.dlq_max_payload_bytes)
        log.warning("job %s dead-lettered: %s", result.job_id, result.error.message if result.error else "failed")
    callback_url = callback_of(payload)
    if resources.lease is not None:  # the result and the job's release: one round trip
        dropped = await resources.lease.save_result(resources.store, result, dead, callback_url)
    else:
        dropped = await resources.store.save(result, dead_letter=dead, callback_url=callback_url)
    if dropped:
        m.DEAD_LETTERS_DROPPED.inc(dropped)
    if dead is not None:
        resources.outcomes["dead_lettered"] += 1
    return _count(resources, kind, result)


def _count(resources: Resources, kind: str, result: JobResult) -> str:
    m.child(m.JOBS, kind, result.status).inc()
    resources.outcomes[result.status] += 1
    if result.enqueued_at and result.finished_at:
        m.child(m.JOB_DURATION, kind).observe(max((result.finished_at - result.enqueued_at).total_seconds(), 0.0))
    return result.status


async def _run(
    resources: Resources,
    kind: str,
    payload: Any,
    job_id: str,
    run: int,
    enqueued_at: datetime | None,
    size: int,
    events: ev.JobEvents | None = None,
) -> JobResult:
    settings = resources.settings
    base: dict[str, Any] = {
        "job_id": job_id,
        "kind": kind,
        "started_at": datetime.now(UTC),
        "enqueued_at": enqueued_at,
        "runs": run,
    }
    job = _checked(kind, payload, settings, size, base)
    if isinstance(job, JobResult):
        return job
    base["source"] = job.source
    line = batches.line_of(job_id)
    if line is not None:
        # the one check a batch line costs: cancelled or past its window, it ends without a call
        ended = await batches.ended(resources.store.redis, line[0])
        if ended is not None:
            return _finish(JobResult(**base, status="failed", error=ended))
    if run > settings.max_job_runs:
        # earlier runs never finished (a worker killed, or cancelled past its grace, each time):
        # a poison job must not take down worker after worker
        message = f"started {run - 1} times without finishing (MAX_JOB_RUNS={settings.max_job_runs}); not run again"
        return _finish(JobResult(**base, status="failed", error=ErrorInfo(type="abandoned", message=message)))
    call = _call_of(resources, job, kind, job_id, run, events)
    # the answer awaited here, not in a coroutine of its own: a frame fewer to resume at every await
    try:
        async with asyncio.timeout(settings.job_timeout_s):
            if isinstance(job, RoutedJob):
                route, models = _chain_of(call, job)
                result = _routed(call, await walk_chain(call, models), route, base)
            elif isinstance(job, CompareJob):
                result = await _compare(call, job, base)
            else:
                raise TypeError(f"job kind {job.kind!r} must subclass RoutedJob or CompareJob")
    except Deferred as d:
        return _deferred(d, call, base, run, settings.max_job_runs)
    except TimeoutError:
        message = f"job took longer than JOB_TIMEOUT_S={settings.job_timeout_s:g}"
        error = ErrorInfo(type="timeout", message=message)
        return _finish(JobResult(**base, status="failed", attempts=call.attempts, error=error))
    return _finish(result)


def _checked(kind: str, payload: Any, settings: Settings, size: int, base: dict[str, Any]) -> JobBase | JobResult:
    """The job, or its refusal: a payload the contract or the bounds refuse (another writer's)."""
    try:
        job = JOB_KINDS[kind].model_validate(payload)
    except ValidationError as exc:
        return _refused(base, *describe_validation_error(exc))
    out_of_bounds = bounds.problem(job, settings, size)
    if out_of_bounds:
        return _refused(base, *out_of_bounds)
    return job


def _call_of(resources: Resources, job: JobBase, kind: str, job_id: str, run: int, events: ev.JobEvents | None) -> Call:
    settings = resources.settings
    return Call(
        resources,
        job_id,
        {"messages": job.build_messages(), **job.request_params()},
        max_wait_s=job.wait_limit(settings.max_wait_s),
        kind=kind,
        source=job.source,
        run=run,
        gemini_native=isinstance(job, RoutedJob) and job.gemini_native,
        bulk=job.bulk,
        events=events,
        cache=job.cache,
        route=routes.route_name(job.model) if isinstance(job, RoutedJob) else None,
    )


def _deferred(d: Deferred, call: Call, base: dict[str, Any], run: int, max_runs: int) -> JobResult:
    """A job that cannot progress now: back to the queue (arq's Retry, raised here), or failed
    on its last run (MAX_JOB_RUNS)."""
    if isinstance(d, QuotaDeferred):  # its source at its quota: this run is given back
        retry = Retry(defer=d.wait_s)
        retry.uncounted = True  # type: ignore[attr-defined]  # read by worker.process.runner
        retry.in_place = isinstance(d, SlotGivenBack)  # type: ignore[attr-defined]
        raise retry from None
    if run >= max_runs:
        error = d.error.model_copy(update={"message": f"gave up after {run} runs: {d.error.message}"})
        return _finish(JobResult(**base, status="failed", attempts=call.attempts, error=error))
    log.debug("job %s back to the queue for %.2fs: %s", call.job_id, d.wait_s, d.error.message)
    raise Retry(defer=d.wait_s) from None


def _chain_of(call: Call, job: RoutedJob) -> tuple[str | None, list[str]]:
    """(the route the job's model names, or None; the models to try, in order)."""
    default = chain(job.model, job.fallbacks, call.settings)
    return routes.chain_of(job, call.payload["messages"], call.settings, default)


def _routed(call: Call, answer: ModelAnswer, route: str | None, base: dict[str, Any]) -> JobResult:
    """A routed job's result: the answer's own values, not a dump of them validated again."""
    model = answer.model if answer.status == "succeeded" else None
    if route is not None:
        m.ROUTE_CHOICES.labels(route, call.resources.labels.model(model) if model else "none").inc()
    fields = {name: getattr(answer, name) for name in _ANSWER_FIELDS}
    return JobResult(**base, **fields, model=model, route=route, attempts=call.attempts)


# What a routed job's result takes from the answer (its `model` is the answering one, or None).
_ANSWER_FIELDS = tuple(name for name in ModelAnswer.model_fields if name != "model")


def _refused(base: dict[str, Any], field: str, message: str) -> JobResult:
    """A payload from another writer that the contract or the bounds refuse: the same words a
    producer would have got."""
    log.warning("job %s rejected: %s: %s", base["job_id"], field, message)
    error = ErrorInfo(type="invalid_job", message=f"{field}: {message}", field=field)
    return _finish(JobResult(**base, status="failed", error=error))


def _finish(result: JobResult) -> JobResult:
    result.finished_at = datetime.now(UTC)
    return result


async def _compare(call: Call, job: CompareJob, base: dict[str, Any]) -> JobResult:
    """Every model at once, no fallbacks; one failing does not fail the others."""
    steps = await asyncio.gather(*(try_model(call, model) for model in job.models))
    answers = [s.answer for s in steps]
    ok = [a for a in answers if a.status == "succeeded"]
    costs = [a.cost for a in answers if a.cost is not None]
    error = None
    if not ok:
        error = ErrorInfo(
            type="all_failed", message="; ".join(f"{a.model}: {a.error.message}" for a in answers if a.error)
        )
    return JobResult(
        **base,
        status="succeeded" if ok else "failed",
        answers=answers,
        attempts=call.attempts,
        cost=round(sum(costs), 10) if costs else None,
        cost_source=_combined_source(answers),
        latency_s=max((a.latency_s or 0.0) for a in answers),
        error=error,
    )


def _combined_source(answers: list[ModelAnswer]) -> str:
    sources = {a.cost_source for a in answers if a.status == "succeeded"} - {"cache"}  # a hit costs 0, known
    if not sources:
        return "cache" if any(a.cached for a in answers) else "unknown"
    if "unknown" in sources:
        return "unknown"
    return "gateway" if sources == {"gateway"} else "price_table"
