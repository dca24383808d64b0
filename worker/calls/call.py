"""One job's calls (`Call`): its payload, limits and attempts, the token estimates, the wire body
a model is sent, the budget's plan; and how a job that cannot progress goes back to the queue
(`Deferred` and its kin). worker.calls.routing walks a chain with it."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..contract.models import Attempt, ErrorInfo, ModelAnswer
from ..limits import budgets, fair, tokens
from ..limits.limiter import Admission
from . import gemini
from .client import chat_body
from .gemini import is_gemini

if TYPE_CHECKING:
    from ..contract.settings import Settings
    from ..outputs.events import JobEvents
    from ..process.resources import Resources

# What a job without max_tokens is assumed to produce, for the token booking.
DEFAULT_COMPLETION_ESTIMATE = 512
# OpenAI's reasoning models refuse `max_tokens` (400, unsupported_parameter): their cap is
# `max_completion_tokens`. The other models behind AIsa take `max_tokens` (aisa-wire.md), and
# Gemini's native path `maxOutputTokens` (worker.calls.gemini translates either).
_COMPLETION_CAP_ONLY = re.compile(r"(o\d|gpt-5)")


class Deferred(Exception):
    """The job cannot progress now: put it back in the queue for `wait_s` (arq's Retry)."""

    def __init__(self, wait_s: float, error: ErrorInfo) -> None:
        super().__init__(error.message)
        self.wait_s = wait_s
        self.error = error


class SlotTurn:
    """Fair share: an interactive job that waits for a rate-limit slot waits in the model's slot
    line (worker.limits.fair), fleet-wide, where turns go by the sources' weights: its ticket names its
    place, and the limiter books a slot only for the job whose turn it is. Counted in
    `Resources.slot_waiters` while waiting (a worker lets FAIR_SHARE_SLOT_WAITERS wait; another
    job gives its worker slot back). A bulk job waits in the bulk line, behind every interactive
    job, holding its worker slot as before. A job that stops waiting without booking leaves the line."""

    def __init__(self, call: Call, model: str) -> None:
        self.call, self.model, self.counted, self.lined = call, model, False, False
        self._ticket: fair.LineTicket | None = None

    def ticket(self, join: bool) -> fair.LineTicket | None:
        """The job's ticket for this admission: under fair share, for a model a rate limit spaces
        (None otherwise); `join`: it may wait in the line (it will not give its worker slot back)."""
        call = self.call
        if not call.settings.fair_share or not call.resources.limiter.limited(self.model):
            return None
        lease = call.resources.lease
        source = lease.sources.get(call.job_id) if lease is not None else None
        if source is None:  # (a job the queue itself gave: its source's name only if the settings name it)
            named = call.source is None or call.source in call.settings.source_weights
            source = (call.source or fair.DEFAULT_SOURCE) if named else fair.OTHER_SOURCE
        self._ticket = fair.ticket(call.settings, self.model, call.job_id, source, call.bulk, join)
        return self._ticket

    def answered(self, admission: Admission) -> None:
        """Whether the job is in the line now: it joined (or stays: `line`, `retry`), or left by booking."""
        if self._ticket is not None:
            if admission.booked:
                self.lined = False
            elif admission.status in ("line", "retry"):
                self.lined = True

    def wanted(self, admission: Admission) -> bool:
        """A wait this is for: an interactive job's, under fair share, for a slot (or tokens)."""
        s = self.call.settings
        return s.fair_share and not self.call.bulk and admission.status in ("wait", "line", "retry")

    def take(self) -> None:
        self.call.resources.slot_waiters += 1
        self.counted = True

    def release(self) -> None:
        if self.counted:
            self.call.resources.slot_waiters -= 1
            self.counted = False

    async def __aenter__(self) -> SlotTurn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        if self.lined and self._ticket is not None:
            self.lined = False
            with contextlib.suppress(Exception):  # (its deadline takes it off the line anyway)
                await asyncio.shield(fair.leave_line(self.call.resources.limiter.redis, self._ticket))


class QuotaDeferred(Deferred):
    """The job's source is at its quota: back to the queue, the run not counted (MAX_JOB_RUNS)."""


class SlotGivenBack(QuotaDeferred):
    """Fair share: the worker already has FAIR_SHARE_SLOT_WAITERS jobs waiting for a rate-limit
    slot: this one goes back to its place in its source's sub-queue (not counted as a run)."""


@dataclass
class Step:
    """How trying one model ended: `ok` (answer), `next` (try the next model), `fail` (stop the
    job), `larger` (context too long: go to the larger-context model). `wait_s` is set when the
    model was only unavailable for a while (rate limit, open circuit)."""

    outcome: str
    answer: ModelAnswer
    wait_s: float | None = None


@dataclass
class Call:
    """One job's calls: the payload, the job's limits, and the attempts made so far."""

    resources: Resources
    job_id: str
    payload: dict[str, Any]
    max_wait_s: float
    kind: str = "chat"
    source: str | None = None
    run: int = 1
    gemini_native: bool = False
    bulk: bool = False
    cache: bool | None = None  # the job's `cache` (worker.calls.cache)
    attempts: list[Attempt] = field(default_factory=list)
    # worker.limits.budgets: the first budget refusal of this job, and the smallest worst case a budget
    # refused or made wait: a fallback must be cheaper than it
    budget_refused: ErrorInfo | None = None
    budget_cap: float | None = None
    # a streaming job's live events (worker.outputs.events): None publishes nothing
    events: JobEvents | None = None
    route: str | None = None  # the route (`route:<name>`) the job's model named, if any: its spend is kept by route
    _bounds: dict[str, int] = field(default_factory=dict, repr=False)  # prompt_bound by model
    _estimate: int | None = field(default=None, repr=False)  # estimate_prompt_tokens, once

    @property
    def settings(self) -> Settings:
        return self.resources.settings

    @property
    def near_front(self) -> bool:
        """Book a rate-limit slot only within BULK_HORIZON_S of now: a bulk job (interactive jobs
        go first), and every job under fair share (worker.limits.fair), so that the job a source's turn
        just picked never queues behind slots other sources' jobs booked far ahead."""
        return self.bulk or self.settings.fair_share

    def gives_slot_back(self) -> bool:
        """Fair share: a job about to wait for a rate-limit slot while this worker already has
        FAIR_SHARE_SLOT_WAITERS waiting gives its worker slot back, so jobs wait in their sources'
        sub-queues (where turns are taken by weight), not in worker slots (where the first to ask
        after a slot frees gets it). Only before its first call: a re-run would repeat calls; and
        only a job that came from a sub-queue (one from the queue itself would be due there again
        at once)."""
        s, lease = self.settings, self.resources.lease
        return (
            s.fair_share
            and lease is not None
            and self.job_id in lease.sources
            and not self.bulk
            and not self.attempts
            and self.kind != "compare"
            and self.resources.slot_waiters >= s.fair_share_slot_waiters
        )

    def estimate_tokens(self) -> int:
        """Prompt plus completion for the booking: each of the `n` choices may write up to the
        smaller of max_tokens and max_completion_tokens (DEFAULT_COMPLETION_ESTIMATE if neither)."""
        return self.estimate_prompt_tokens() + self.completion_cap(DEFAULT_COMPLETION_ESTIMATE)

    def estimate_prompt_tokens(self) -> int:
        """A realistic count of the prompt, every input field's, for the rate limiter's booking
        (worker.limits.tokens says why not the bound)."""
        if self._estimate is None:
            self._estimate = tokens.input_estimate(self.payload)
        return self._estimate

    def prompt_bound(self, model: str) -> int:
        """The most prompt tokens a call to `model` can be billed, for its budget reservation:
        every byte of the body sent, with the completion cap a budget adds (worker.limits.tokens)."""
        bound = self._bounds.get(model)
        if bound is None:
            bound = self._bounds[model] = tokens.input_bound(self.wire_body(self.capped(self.payload, model), model))
        return bound

    def wire_body(self, payload: dict[str, Any], model: str) -> dict[str, Any]:
        """The body `send` sends for `payload` to `model`."""
        payload = {**payload, "model": model}
        if self.native(model, payload):
            try:
                return gemini.request_body(payload)
            except ValueError:
                pass  # not sendable natively: the call fails unsent; the chat body bounds it anyway
        return chat_body(payload)

    def native(self, model: str, payload: dict[str, Any]) -> bool:
        """Whether a call to `model` goes to Gemini's native endpoint (a stream never does)."""
        return self.gemini_native and is_gemini(model) and not payload.get("stream")

    def capped(self, payload: dict[str, Any], model: str) -> dict[str, Any]:
        """`payload` with the completion cap a budget assumes for a job that set none
        (`budget_max_tokens` a choice), in the field `model` takes: a budget's worst case
        holds only if the gateway is held to it."""
        if self.own_cap(payload):
            return payload
        name = "max_completion_tokens" if _COMPLETION_CAP_ONLY.match(model) else "max_tokens"
        return {**payload, name: max(self.budget_max_tokens(model), 1)}

    @staticmethod
    def own_cap(payload: dict[str, Any]) -> bool:
        return bool(payload.get("max_tokens") or payload.get("max_completion_tokens"))

    def budget_max_tokens(self, model: str) -> int:
        """The cap a budget sends with a job that set none: BUDGET_DEFAULT_MAX_TOKENS, or what
        the model's context window (MODEL_CONTEXT) leaves after the prompt's estimate, if less: a
        cap the window cannot hold is refused by the gateway. 0 or less: the prompt alone fills it."""
        cap = self.settings.budget_default_max_tokens
        context = self.settings.model_context.get(model)
        return cap if context is None else min(cap, context - self.estimate_prompt_tokens())

    def may_lack_room(self, model: str) -> bool:
        """Whether a call to `model` may find no room for a budget's cap (`no_room` says): the
        job set no cap and the prompt's estimate leaves none in the model's window."""
        return not self.own_cap(self.payload) and self.budget_max_tokens(model) <= 0

    async def no_room(self, model: str) -> ModelAnswer | None:
        """A `context_length` failure, unsent, when a budget applies to a call to `model` of a
        job that set no cap and the prompt's estimate leaves no room in the model's window for
        the cap a budget sends; None otherwise."""
        if not self.may_lack_room(model):
            return None
        if not await self.resources.limiter.budgets.applies(model, self.source, self.job_id):
            return None  # no budget, no cap added: the call goes as the job asked
        context = self.settings.model_context[model]
        message = (
            f"the prompt (about {self.estimate_prompt_tokens()} tokens) leaves no room in {model}'s context "
            f"window of {context} tokens for the completion cap a budget sends: shorten it or use a larger model"
        )
        error = ErrorInfo(type="context_length", message=message, code="context_length_exceeded")
        return ModelAnswer(model=model, status="failed", error=error)

    def completion_cap(self, default: int) -> int:
        """The most completion tokens the call may be billed: the cap (`default` if none) times `n`."""
        caps = [t for t in (self.payload.get("max_tokens"), self.payload.get("max_completion_tokens")) if t]
        return (min(caps) if caps else default) * (self.payload.get("n") or 1)

    def budget_plan(self, model: str) -> budgets.Plan | None:
        """The budget part of this call's admission (worker.limits.budgets), None when no budget applies."""
        return self.resources.limiter.budgets.plan(
            model,
            self.source,
            self.job_id,
            lambda: (self.prompt_bound(model), self.completion_cap(max(self.budget_max_tokens(model), 1))),
            # a compare job's models are not fallbacks of each other
            None if self.kind == "compare" else self.budget_cap,
        )

    def cut_by_budget_cap(self, answer: ModelAnswer) -> bool:
        """Whether `answer` may have been cut by the cap a budget added (the job set none): not
        what the same request gets without a budget, so it is not cached."""
        if self.own_cap(self.payload):
            return False
        return "length" in {answer.finish_reason, *(c.finish_reason for c in answer.choices or ())}
