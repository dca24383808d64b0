"""What an upstream failure does to a job: the retry and fallback policy, as one table.

| error class      | status          | action                                                              |
|------------------|-----------------|---------------------------------------------------------------------|
| `rate_limit`     | 429             | RETRY_AFTER: every worker pauses the model for Retry-After, then    |
|                  |                 | retries; a wait over the job's limit moves on to the next model     |
| `server`         | 500/502/503/504 | BACKOFF: capped, jittered exponential backoff, then the next model  |
| `timeout`        | -               | BACKOFF                                                             |
| `connection`     | -               | BACKOFF                                                             |
| `malformed`      | 200 unreadable  | BACKOFF (a stream cut mid-way is malformed too)                     |
| `not_found`      | 404             | NEXT_MODEL at once, no retry                                        |
| `permission`     | 403             | NEXT_MODEL at once (another model may be allowed)                   |
| `status`         | other 4xx       | NEXT_MODEL at once                                                  |
| `bad_request`    | 400/422         | FAIL the job with the upstream's message: no retry, no fallback     |
| `context_length` | 400             | LARGER_CONTEXT: the configured larger-context model, else FAIL      |
| `auth`           | 401             | STOP_QUEUE: fail the job, close the queue until a probe passes      |
| `credits`        | 402             | PAUSE_QUEUE: re-queue the job, close the queue until credits return |

Whether a failure may have been billed (and so keeps its budget reservation spent) is the
error's `billable` (worker.calls.errors): `server`, `timeout`, `connection` and `malformed` may be,
except a connect error or connect timeout (never sent); a 4xx and a 429 are not.

A model is tried at most ATTEMPTS_PER_MODEL times. When the chain runs out and some model
was only waiting (rate limit, open circuit), the job goes back to the queue with a delay
(arq's `Retry(defer=…)`) instead of failing; after MAX_JOB_RUNS runs it is dead-lettered.
"""

from __future__ import annotations

import enum
import random

from ..contract.settings import Settings


class Action(enum.Enum):
    RETRY_AFTER = "retry_after"
    BACKOFF = "backoff"
    NEXT_MODEL = "next_model"
    FAIL = "fail"
    LARGER_CONTEXT = "larger_context"
    STOP_QUEUE = "stop_queue"
    PAUSE_QUEUE = "pause_queue"


# What each action does to a job, in words (the docs' error table is generated from this and POLICY).
ACTION_TEXT: dict[Action, str] = {
    Action.RETRY_AFTER: "every worker holds the model until `retry-after-ms` / `Retry-After` (on every retry, not only "
    "the first), then retries; a wait over the job's `max_wait_s` moves on to the next model",
    Action.BACKOFF: "retry after capped, jittered exponential backoff; after `ATTEMPTS_PER_MODEL` the next model",
    Action.NEXT_MODEL: "the next model at once, no retry",
    Action.FAIL: "the job fails with the upstream's message: no retry, no fallback",
    Action.LARGER_CONTEXT: "the model's `CONTEXT_FALLBACKS` entry, else the job fails",
    Action.STOP_QUEUE: "the job fails and the whole queue pauses: workers stop taking jobs, one probes `GET /models` "
    "every `PROBE_INTERVAL_S`, and all resume when it passes",
    Action.PAUSE_QUEUE: "the job goes back to the queue and the whole queue pauses; one worker probes with a 1-token "
    "call (recorded and charged like any other) until credits are back",
}

POLICY: dict[str, Action] = {
    "rate_limit": Action.RETRY_AFTER,
    "server": Action.BACKOFF,
    "timeout": Action.BACKOFF,
    "connection": Action.BACKOFF,
    "malformed": Action.BACKOFF,
    "not_found": Action.NEXT_MODEL,
    "permission": Action.NEXT_MODEL,
    "status": Action.NEXT_MODEL,
    "bad_request": Action.FAIL,
    "context_length": Action.LARGER_CONTEXT,
    "auth": Action.STOP_QUEUE,
    "credits": Action.PAUSE_QUEUE,
}

# Failures that say the model (not the request, not our account) is unwell: they count
# towards its circuit breaker.
CIRCUIT_CLASSES = frozenset({"server", "timeout", "connection", "malformed"})


def action_for(error_class: str) -> Action:
    return POLICY.get(error_class, Action.NEXT_MODEL)


def backoff_delay(retry: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """AIsa's advice: from `base_s`, doubling per retry, ±25 % jitter, capped at `cap_s`.

    Jitter keeps workers that failed together from retrying together.
    """
    jitter = (rng or random).uniform(0.75, 1.25)
    return min(cap_s, min(cap_s, base_s * 2**retry) * jitter)


def chain(model: str, job_fallbacks: list[str] | None, settings: Settings) -> list[str]:
    """The models to try, in order: the job's own list if it gave one, else the configured chain."""
    if job_fallbacks is not None:
        rest = job_fallbacks
    else:
        rest = settings.fallbacks.get(model, settings.default_fallbacks)
    return list(dict.fromkeys([model, *rest]))
