"""The arq job functions: `chat`, `vision`, `compare`.

Each takes the job as one JSON object (a `worker.models` job), calls the gateway and
stores a `JobResult`. A job never raises for an upstream failure or a bad payload: the
failure is the result, so producers always get an answer naming what went wrong.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from . import errors
from .client import AIsaClient, Completion
from .models import (JOB_TYPES, Attempt, CompareJob, ErrorInfo, JobResult, ModelAnswer,
                     describe_validation_error)
from .pricing import cost_of
from .settings import Price
from .store import ResultStore

log = logging.getLogger("llm_router.jobs")

Ctx = dict[str, Any]


async def chat(ctx: Ctx, job: Any) -> str:
    return await run_job(ctx, "chat", job)


async def vision(ctx: Ctx, job: Any) -> str:
    return await run_job(ctx, "vision", job)


async def compare(ctx: Ctx, job: Any) -> str:
    return await run_job(ctx, "compare", job)


async def run_job(ctx: Ctx, kind: str, payload: Any) -> str:
    """Validate, call, store; returns the status (arq logs it)."""
    started = datetime.now(timezone.utc)
    base = {"job_id": ctx["job_id"], "kind": kind, "started_at": started, "enqueued_at": ctx.get("enqueue_time")}
    try:
        job = JOB_TYPES[kind].model_validate(payload)
    except ValidationError as exc:
        field, message = describe_validation_error(exc)
        log.warning("job %s rejected: %s: %s", ctx["job_id"], field, message)
        result = JobResult(**base, status="failed",
                           error=ErrorInfo(type="invalid_job", message=f"{field}: {message}", field=field))
    else:
        base["source"] = job.source
        if isinstance(job, CompareJob):
            result = await _compare(ctx, job, base)
        else:
            result = await _single(ctx, job, base)
    result.finished_at = datetime.now(timezone.utc)
    store: ResultStore = ctx["store"]
    await store.save(result)
    return result.status


async def _single(ctx: Ctx, job: Any, base: dict[str, Any]) -> JobResult:
    answer = await call_model(ctx, job.model, {"model": job.model, "messages": job.build_messages(),
                                               **job.request_params()})
    return JobResult(**base, **_answer_fields(answer), attempts=[_attempt(answer)])


async def _compare(ctx: Ctx, job: CompareJob, base: dict[str, Any]) -> JobResult:
    """Every model at once; one failing does not fail the others."""
    messages, params = job.build_messages(), job.request_params()
    answers = await asyncio.gather(*(
        call_model(ctx, model, {"model": model, "messages": messages, **params}) for model in job.models))
    ok = [a for a in answers if a.status == "succeeded"]
    costs = [a.cost for a in answers if a.cost is not None]
    error = None
    if not ok:
        error = ErrorInfo(type="all_failed", message="; ".join(f"{a.model}: {a.error.message}" for a in answers if a.error))
    return JobResult(
        **base, status="succeeded" if ok else "failed", answers=answers,
        attempts=[_attempt(a) for a in answers],
        cost=round(sum(costs), 10) if costs else None,
        cost_source=_combined_source(answers),
        latency_s=max((a.latency_s or 0.0) for a in answers), error=error,
    )


async def call_model(ctx: Ctx, model: str, payload: dict[str, Any]) -> ModelAnswer:
    """One upstream call, as a ModelAnswer: succeeded with its cost, or failed with its error."""
    client: AIsaClient = ctx["client"]
    started = time.perf_counter()
    try:
        completion = await client.chat(payload)
    except errors.AIsaError as exc:
        return ModelAnswer(model=model, status="failed", latency_s=time.perf_counter() - started,
                           error=ErrorInfo(type=exc.error_class, message=exc.message, status=exc.status, code=exc.code))
    return _succeeded(model, completion, ctx["prices"])


def _succeeded(model: str, c: Completion, prices: dict[str, Price]) -> ModelAnswer:
    cost, source = cost_of(model, c.cost, c.usage, prices)
    return ModelAnswer(
        model=model, status="succeeded", content=c.content, tool_calls=c.tool_calls,
        function_call=c.function_call, finish_reason=c.finish_reason, usage=c.usage, cost=cost,
        cost_source=source, credits_remaining=c.credits_remaining, latency_s=c.latency_s, ttft_s=c.ttft_s,
    )


def _answer_fields(answer: ModelAnswer) -> dict[str, Any]:
    return answer.model_dump(exclude={"model"}) | {"model": answer.model if answer.status == "succeeded" else None}


def _attempt(answer: ModelAnswer) -> Attempt:
    return Attempt(model=answer.model, ok=answer.status == "succeeded", latency_s=answer.latency_s or 0.0,
                   error=answer.error, cost=answer.cost)


def _combined_source(answers: list[ModelAnswer]) -> str:
    sources = {a.cost_source for a in answers if a.status == "succeeded"}
    if not sources or "unknown" in sources:
        return "unknown"
    return "gateway" if sources == {"gateway"} else "price_table"
