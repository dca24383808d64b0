"""Walking a job's fallback chain under the policy of `worker.calls.policy` and the shared limits
of `worker.limits.limiter`. Every real upstream call is recorded (cost included) the moment it ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Coroutine
from typing import Any

from ..batches.record import line_of
from ..contract.models import ANSWER_FIELDS, Attempt, ErrorInfo, ModelAnswer
from ..contract.pricing import cost_of
from ..limits import budgets
from ..limits.fair import LineTicket
from ..limits.limiter import Admission
from ..observe import metrics as m
from ..process.scripts import run_scripts
from . import cache, errors
from .call import Call, Deferred, QuotaDeferred, SlotGivenBack, SlotTurn, Step
from .client import Completion
from .policy import CIRCUIT_CLASSES, Action, action_for, backoff_delay

log = logging.getLogger("llm_router.routing")
# How often a call short of tokens asks the limiter again (see worker.limits.limiter).
TOKEN_RECHECK_S = 0.05
# How often a call waiting on a half-open circuit's probe asks again, and how long a job that
# cannot wait in place goes back to the queue for (not the probe's lease: a request timeout).
PROBE_RECHECK_S = 0.2
PROBE_DEFER_S = 1.0
# A bulk job whose slot is further off than BULK_HORIZON_S looks again this often at most.
BULK_RECHECK_S = 1.0
# How often a call whose worst case fits a budget's spend, not what calls in flight reserve, asks
# again; and how long a job that cannot wait in place for them goes back to the queue for.
BUDGET_RECHECK_S = 0.1
BUDGET_DEFER_S = 1.0


async def walk_chain(call: Call, chain: list[str]) -> ModelAnswer:
    """The first model of `chain` that answers; raises Deferred when all were only busy."""
    models = list(chain)
    answers: list[ModelAnswer] = []
    waits: list[float] = []
    i = 0
    while i < len(models):
        step = await try_model(call, models[i])
        answers.append(step.answer)
        if step.outcome in ("ok", "fail"):
            return step.answer
        if step.wait_s is not None:
            waits.append(step.wait_s)
        if step.outcome == "larger":
            larger = call.settings.context_fallbacks.get(models[i])
            if larger is None or larger in models[: i + 1]:
                return step.answer
            models.insert(i + 1, larger)
        if i + 1 < len(models):
            labels = call.resources.labels
            m.FALLBACKS.labels(labels.model(models[i]), labels.model(models[i + 1])).inc()
        i += 1
    if waits:
        raise Deferred(max(min(waits), 0.05), _chain_error(answers, "rate_limit"))
    return _exhausted(answers)


def try_model(call: Call, model: str) -> Coroutine[Any, Any, Step]:
    """Call one model until it answers or the policy says stop/move on; a cacheable call is
    answered from the response cache when it can be, before anything is booked (worker.calls.cache).
    (The coroutine of the one that applies, not a coroutine awaiting it: a frame fewer to resume
    at every await of the call.)"""
    if cache.wanted(call.settings, call.cache, call.payload):
        return _cached(call, model)
    return call_model(call, model)


async def _cached(call: Call, model: str) -> Step:
    async with cache.flight(call, model) as flight:
        if flight.hit is not None:
            return Step("ok", flight.hit)
        step = await call_model(call, model)
        if step.outcome == "ok" and not call.cut_by_budget_cap(step.answer):
            flight.keep(step.answer)
        return step


async def call_model(call: Call, model: str) -> Step:
    """Call one model until it answers or the policy says stop/move on."""
    refused = await call.no_room(model) if call.may_lack_room(model) else None
    if refused is not None:  # what a gateway would refuse is not sent: the larger-context model, or fail
        return Step("larger", refused)
    limiter, tokens = call.resources.limiter, call.estimate_tokens()
    failures, waited, napped, slot_wait = 0, 0.0, 0.0, 0.0
    async with SlotTurn(call, model) as turn:
        while True:
            budget = call.max_wait_s - napped
            # a bulk job books only near the front of the schedule: interactive jobs go first
            reach = min(budget, call.settings.bulk_horizon_s) if call.near_front else budget
            join, ticket = _ticket(call, turn)
            plan = call.budget_plan(model)
            admission = await limiter.admit(model, tokens, max(reach, 0.0), plan, call.source, ticket)
            turn.answered(admission)
            nap = _nap(admission, budget, call)
            if nap:
                _wait_in_line(turn, admission, join)
                # look again soon: tokens given back by calls that just finished, or a probe that
                # closed the circuit, let this call start sooner than the admission's wait_s
                await asyncio.sleep(nap)
                waited, napped, slot_wait = waited + nap, napped + nap, slot_wait + nap
                continue
            turn.release()  # booked (or not admitted): no longer waiting
            if not admission.booked:
                return _not_admitted(call, model, tokens, admission)
            if admission.wait_s > 0:  # (no sleep(0): a suspension of the whole job for nothing)
                try:
                    await asyncio.sleep(admission.wait_s)
                except asyncio.CancelledError:
                    await _give_back(call, model, tokens, admission.reservation, sent=False)
                    raise
            waited += admission.wait_s
            m.child(m.RATE_LIMIT_WAIT, call.resources.labels.model(model)).observe(slot_wait + admission.wait_s)
            slot_wait = 0.0
            payload = _sent(call, model, admission)
            answer, exc = await call_once(call, model, payload, tokens, waited, admission.reservation)
            if exc is None:
                return Step("ok", answer)
            failures += 1
            after = await apply_policy(call, model, answer, exc, failures)
            if isinstance(after, Step):
                return after
            waited = after


def _ticket(call: Call, turn: SlotTurn) -> tuple[bool, LineTicket | None]:
    """Fair share: whether the job may wait in the slot line (it waits there unless it gives its
    worker slot back: FAIR_SHARE_SLOT_WAITERS of this worker's jobs wait already, and its turn
    is not next), and its ticket; its place among the worker's waiters is taken before it asks
    (others ask meanwhile)."""
    join = turn.counted or not call.gives_slot_back()
    ticket = turn.ticket(join)
    if ticket is not None and ticket.join and not ticket.bulk and not turn.counted:
        turn.take()
    return join, ticket


def _wait_in_line(turn: SlotTurn, admission: Admission, join: bool) -> None:
    """Before a nap: an interactive job that waits for a slot under fair share is counted among
    the worker's waiters, or gives its worker slot back when it may not wait (SlotGivenBack)."""
    if turn.wanted(admission) and not turn.counted:
        if not (join or turn.lined):
            raise SlotGivenBack(0, ErrorInfo(type="rate_limit", message="gave its worker slot back (fair share)"))
        turn.take()


def _sent(call: Call, model: str, admission: Admission) -> dict[str, Any]:
    """The payload sent to `model`: with the cap a budget assumed, when one applies."""
    payload = {**call.payload, "model": model}
    if admission.reservation is not None:
        payload = call.capped(payload, model)
    return payload


def _nap(admission: Admission, budget_s: float, call: Call) -> float:
    """How long to sleep before asking the limiter again; 0: do not ask again."""
    if admission.status == "retry":  # the limiter already checked it is within the budget
        return min(admission.wait_s, TOKEN_RECHECK_S)
    if admission.status == "probing":
        return min(PROBE_RECHECK_S, admission.wait_s, max(budget_s, 0.0))
    if admission.status == "budget_wait":  # worker.limits.budgets: calls in flight will settle
        return min(BUDGET_RECHECK_S * random.uniform(0.5, 1.5), max(budget_s, 0.0))
    if call.near_front and admission.status in ("wait", "line") and admission.wait_s <= budget_s:
        # its slot is within the job's wait but beyond the horizon: sleep until it is near
        horizon = call.settings.bulk_horizon_s
        return min(max(admission.wait_s - horizon, TOKEN_RECHECK_S), BULK_RECHECK_S)
    return 0.0


async def _give_back(call: Call, model: str, tokens: int, reservation: budgets.Reservation | None, sent: bool) -> None:
    """A booking never outlives its call: a job cancelled (JOB_TIMEOUT_S, SIGTERM past the grace)
    while it waits for its slot or for the answer gives back what it booked, a probe slot and its
    budget reservation; a call cancelled in flight (`sent`) may have been billed: its
    reservation stays spent (worker.limits.budgets). Its caller raises the CancelledError again."""
    limiter = call.resources.limiter
    budget = limiter.budgets.settlement(reservation, model, None, billable=sent)
    refund = limiter.settle(
        model,
        booked_tokens=tokens,
        used_tokens=None,
        outcome="neutral",
        pause_s=0,
        budget=budget,
        source=call.source,
    )
    await asyncio.shield(refund)


def _not_admitted(call: Call, model: str, tokens: int, admission: Admission) -> Step:
    """How a model ends that the limiter would not book: a deferral, the next model, or an error."""
    if admission.status == "quota":
        # the source is at its SOURCE_LIMITS quota, whatever the model: back to its sub-queue until
        # its next slot, not in a worker slot (and not counted as a run: QuotaDeferred)
        raise QuotaDeferred(
            admission.wait_s,
            ErrorInfo(type="source_quota", message=f"source {call.source} is at its quota (SOURCE_LIMITS)"),
        )
    if admission.status == "gate":
        gate = admission.gate or {}
        raise Deferred(
            call.settings.probe_interval_s,
            ErrorInfo(type=gate.get("reason", "paused"), message=f"queue paused: {gate.get('message')}"),
        )
    if admission.status in ("budget", "budget_wait") and admission.worst_usd is not None:
        # worker.limits.budgets: a fallback is tried only if cheaper than this model's worst case
        call.budget_cap = min(call.budget_cap or admission.worst_usd, admission.worst_usd)
    if admission.status == "budget":
        # no retry, no wait: only a cheaper model may still fit
        error = call.budget_refused
        if admission.refusal is not None:
            error = budgets.refusal_error(admission.refusal)
            call.budget_refused = call.budget_refused or error
        if error is None:  # made to wait before, now not cheaper than that: wait again
            message = "not cheaper than a model waiting for budget reservations in flight"
            return Step("next", _budget_wait(model, message), wait_s=BUDGET_DEFER_S)
        return Step("next", ModelAnswer(model=model, status="failed", error=error))
    if admission.status == "budget_wait":
        message = "waiting for calls in flight to settle their budget reservations"
        return Step("next", _budget_wait(model, message), wait_s=BUDGET_DEFER_S)
    if admission.status == "too_large":
        # no wait_s: waiting cannot help, only another model (with a larger limit) can
        message = f"request needs {tokens} tokens (prompt + max_tokens), over {admission.limit}: lower max_tokens"
        error = ErrorInfo(type="over_limit", message=message)
        return Step("next", ModelAnswer(model=model, status="failed", error=error))
    if admission.status == "probing":
        # the job cannot wait in place: back to the queue briefly, not for the probe's whole lease
        wait_s = min(admission.wait_s, PROBE_DEFER_S)
        return Step("next", _skipped(model, "circuit_open", wait_s), wait_s=wait_s)
    kind = "circuit_open" if admission.status == "circuit" else "rate_limit"
    return Step("next", _skipped(model, kind, admission.wait_s), wait_s=admission.wait_s)


async def apply_policy(
    call: Call, model: str, answer: ModelAnswer, exc: errors.AIsaError, failures: int
) -> Step | float:
    """What the policy table says after a failed call: how to end this model (a Step), or
    the time already waited before retrying it (backoff slept here; a 429's pause is slept by
    the next `admit`, since it is booked in the shared limiter)."""
    settings, gate = call.settings, call.resources.gate
    action = action_for(exc.error_class)
    if action in (Action.RETRY_AFTER, Action.BACKOFF) and failures < settings.attempts_per_model:
        m.RETRIES.labels(call.resources.labels.model(model)).inc()
        if action is Action.RETRY_AFTER:
            return 0.0
        delay = backoff_delay(failures - 1, settings.backoff_base_s, settings.backoff_cap_s)
        await asyncio.sleep(delay)
        return delay
    if action is Action.RETRY_AFTER:
        return Step("next", answer, wait_s=exc.retry_after or settings.backoff_base_s)
    if action is Action.STOP_QUEUE:
        await gate.close("auth", exc.message, model)
        return Step("fail", answer)
    if action is Action.PAUSE_QUEUE:
        await gate.close("credits", exc.message, model)
        raise Deferred(settings.probe_interval_s, answer.error or ErrorInfo(type="credits", message=exc.message))
    return Step({Action.FAIL: "fail", Action.LARGER_CONTEXT: "larger"}.get(action, "next"), answer)


async def call_once(
    call: Call,
    model: str,
    payload: dict[str, Any],
    tokens: int,
    waited: float,
    reservation: budgets.Reservation | None = None,
) -> tuple[ModelAnswer, errors.AIsaError | None]:
    """One upstream call, recorded with its cost and fed back to the shared limits before returning."""
    label = call.resources.labels.model(model)
    started_at, started = time.time(), time.perf_counter()
    exc: errors.AIsaError | None = None
    try:
        with m.child(m.IN_FLIGHT, label).track_inprogress():
            completion = await send(call, payload)
    except asyncio.CancelledError:
        await _give_back(call, model, tokens, reservation, sent=True)
        raise
    except errors.AIsaError as e:
        exc = e
        answer = ModelAnswer(
            model=model,
            status="failed",
            latency_s=time.perf_counter() - started,
            error=ErrorInfo(
                type=e.error_class, message=e.message, status=e.status, code=e.code, request_id=e.request_id
            ),
        )
        log.info("job %s: %s failed: %s", call.job_id, model, e)
    else:
        answer = succeeded(model, completion, call.settings.prices)
    attempt = Attempt(
        model=model,
        ok=exc is None,
        latency_s=answer.latency_s or 0.0,
        error=answer.error,
        cost=answer.cost,
        run=call.run,
        call_id=os.urandom(8).hex(),  # 16 hex digits (uuid4's: 1.9 us, this: 0.35)
        at=started_at,
        waited_s=round(waited, 4),
    )
    call.attempts.append(attempt)
    first_time = await _record(
        call, model, attempt, answer, tokens, exc, completion if exc is None else None, reservation
    )
    observe(call, label, answer, exc, counted=first_time)
    if call.events is not None and payload.get("stream"):
        # after the call is recorded and settled: a job cancelled here loses none of it
        await call.events.attempt_ended(model, answer.error)
    return answer, exc


def send(call: Call, payload: dict[str, Any]) -> Coroutine[Any, Any, Completion]:
    """The upstream request (its coroutine): Gemini's native endpoint for a Gemini model of a
    `gemini_native` job (unless streamed: the native stream is not served), else chat/completions."""
    client, model = call.resources.client, payload["model"]
    if call.native(model, payload):
        return client.generate_content(model, payload)
    return client.chat(payload, call.events.on_delta(model) if call.events is not None else None)


def observe(call: Call, label: str, answer: ModelAnswer, exc: errors.AIsaError | None, counted: bool) -> None:
    """The call's metrics; spend only when this call was newly recorded, so it matches Redis."""
    m.child(m.UPSTREAM_LATENCY, label).observe(answer.latency_s or 0.0)
    if exc is not None:
        m.ERRORS.labels(label, exc.error_class).inc()
        if isinstance(exc, errors.RateLimitError):
            m.RATE_LIMITED.labels(label).inc()
        return
    if answer.ttft_s is not None:
        m.child(m.TTFT, label).observe(answer.ttft_s)
    if answer.usage:
        m.child(m.TOKENS, label, "prompt").inc(answer.usage.prompt_tokens)
        m.child(m.TOKENS, label, "completion").inc(answer.usage.completion_tokens)
    if counted and answer.cost:
        m.child(m.SPEND, label, call.kind, call.resources.labels.source(call.source)).inc(answer.cost)


async def _record(
    call: Call,
    model: str,
    attempt: Attempt,
    answer: ModelAnswer,
    tokens: int,
    exc: errors.AIsaError | None,
    completion: Completion | None,
    reservation: budgets.Reservation | None = None,
) -> bool:
    """Write the call to the call log and the shared limits; True if it was new there."""
    store, limiter = call.resources.store, call.resources.limiter
    used = answer.usage.total_tokens if answer.usage else None
    if exc is None:
        outcome = "ok"
    else:
        outcome = "fail" if exc.error_class in CIRCUIT_CLASSES else "neutral"
    pause = 0.0
    if isinstance(exc, errors.RateLimitError):
        # no Retry-After: still hold the model for a first backoff step, for every worker
        pause = exc.retry_after if exc.retry_after is not None else call.settings.backoff_base_s
    if completion is not None and model not in call.settings.rate_limits:
        # No configured limit: the gateway's "remaining: 0" is all we know. (With one, the
        # GCRA spacing already runs at the limit, where remaining touches 0 by design.)
        pause = max(pause, learned_pause(completion.rate_limits))
    # Both scripts in one round trip (worker.process.scripts). shield: a cancelled job (SIGTERM past
    # the grace) must still record a call that happened.
    # a failure that may have been billed keeps its reservation spent (worker.calls.errors `billable`)
    budget = limiter.budgets.settlement(
        reservation, model, answer if exc is None else None, billable=exc is not None and exc.billable
    )
    recorded, opened = await asyncio.shield(
        run_scripts(
            store.redis,
            [
                store.record_call_call(call.job_id, attempt, _credits(answer, exc), answer.usage, spend_tags(call)),
                limiter.settle_call(
                    model,
                    booked_tokens=tokens,
                    used_tokens=used,
                    outcome=outcome,
                    pause_s=pause,
                    budget=budget,
                    source=call.source,
                ),
            ],
        )
    )
    if opened:
        m.CIRCUIT_OPENED.labels(call.resources.labels.model(model)).inc()
        log.warning("circuit opened for %s: every worker skips it for %gs", model, call.settings.circuit_open_s)
    return bool(recorded)


def _credits(answer: ModelAnswer, exc: errors.AIsaError | None) -> float | None:
    """What the gateway last said about the credits: its balance, or 0 with a 402 (none left)."""
    if exc is not None and exc.error_class == "credits":
        return 0.0
    return answer.credits_remaining


def spend_tags(call: Call) -> dict[str, str | None]:
    """Who a call's spend is kept under, per day (worker.contract.store): its source, batch and route."""
    line = line_of(call.job_id)
    return {"source": call.source or "none", "batch": line[0] if line else None, "route": call.route}


def learned_pause(rate_limits: dict[str, float]) -> float:
    """Seconds to hold a model when the gateway says its budget is spent (remaining 0)."""
    if rate_limits.get("remaining-requests") == 0 or rate_limits.get("remaining-tokens") == 0:
        return rate_limits.get("reset-in", 1.0)
    return 0.0


def succeeded(model: str, c: Completion, prices: dict) -> ModelAnswer:
    cost, source = cost_of(model, c.cost, c.usage, prices)
    # the completion's own values (its usage, its choices), not a dump of them validated again
    fields = {name: getattr(c, name) for name in ANSWER_FIELDS} | {"cost": cost, "cost_source": source}
    return ModelAnswer(**fields, model=model, status="succeeded")


def _budget_wait(model: str, message: str) -> ModelAnswer:
    return ModelAnswer(model=model, status="failed", error=ErrorInfo(type="budget", message=message))


def _skipped(model: str, kind: str, wait_s: float) -> ModelAnswer:
    message = f"{'circuit open' if kind == 'circuit_open' else 'rate limited'} for {wait_s:.2f}s more"
    return ModelAnswer(model=model, status="failed", error=ErrorInfo(type=kind, message=message))


def _chain_error(answers: list[ModelAnswer], kind: str) -> ErrorInfo:
    return ErrorInfo(type=kind, message="; ".join(f"{a.model}: {a.error.message}" for a in answers if a.error))


def _exhausted(answers: list[ModelAnswer]) -> ModelAnswer:
    """The last failure, its message naming every model that was tried."""
    last = answers[-1]
    if len(answers) > 1 and last.error is not None:
        error = _chain_error(answers, last.error.type)
        error = error.model_copy(
            update={
                "status": last.error.status,
                "code": last.error.code,
                "budget": last.error.budget,
                "message": "every model failed: " + error.message,
            }
        )
        return last.model_copy(update={"error": error})
    return last
