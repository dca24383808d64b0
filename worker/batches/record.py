"""Batches: many jobs submitted as one, in OpenAI's Batch format (producers.batches submits and
reads them). This is the part every process shares: the record and its counters.

A batch is a hash, `llm-router:batch:<batch_id>` (worker.contract.keys), mirroring OpenAI's Batch object:
status, timestamps, `total`/`completed`/`failed` and what OpenAI lacks (cost, tokens, counts
per model). Each line is an ordinary job whose id is `<batch_id>:<line>` (the input line number,
zero-padded so the queue runs lines in input order). A worker that picks a line:

- first reads the batch's `status` and `expires_at` (one HMGET, `ended`): a line of a cancelled
  batch ends `batch_cancelled`, one picked past the window `batch_expired`, with no call;
- stores its result and counts it in one Lua script (`save_line`): HSETNX of the line in the
  batch's done-hash, then the counters, cost and tokens, so a line whose job runs twice after
  a crash is counted once, its cost once; the last line moves the batch to its final status.

A failed line is not dead-lettered: it is in the batch's error output (a batch of thousands
against a model that is down would flush the dead-letter list).
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from ..contract.keys import (
    DONE_PREFIX,
    IN_PROGRESS_PREFIX,
    JOB_PREFIX,
    RESULT_PREFIX,
    RETRY_PREFIX,
    WEBHOOKS,
    batch_done_key,
    batch_key,
    batch_lines_key,
    bulk_key,
    done_channel,
    job_key,
    result_key,
    webhook_key,
)
from ..contract.models import ErrorInfo, JobResult
from ..lua import registry as lua
from ..outputs.outbox import delivery_of

# `batch_<32 hex>` (submitted), or `batch_sched_<schedule>_<yyyymmddThhmmssZ>` (a schedule's tick:
# worker.batches.schedules). Both, and their line ids `<batch_id>:<line>`, stay within the job-id charset
# and its 128 characters (a schedule name has at most 64).
_BATCH_ID = r"batch_(?:[0-9a-f]{32}|sched_[A-Za-z0-9_.-]{1,64}_[0-9]{8}T[0-9]{6}Z)"
BATCH_ID = re.compile(rf"^{_BATCH_ID}$")
_LINE_ID = re.compile(rf"^({_BATCH_ID}):([0-9]{{1,9}})$")
# Line numbers are zero-padded in job ids: arq takes jobs due at the same time in id order.
LINE_DIGITS = 7

Status = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]
STATUSES: tuple[str, ...] = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
FINAL_STATUSES = frozenset({"failed", "completed", "expired", "cancelled"})
# How a line ended: the `outcome` label of llm_router_batch_lines_total.
Outcome = Literal["succeeded", "failed", "cancelled", "expired", "skipped"]
OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "cancelled", "expired", "skipped")

ENDPOINT_CHAT = "/v1/chat/completions"
ENDPOINT_COMPARE = "/v1/llm-router/compare"
ENDPOINTS = {ENDPOINT_CHAT: "chat", ENDPOINT_COMPARE: "compare"}


def line_job_id(batch_id: str, line: int) -> str:
    return f"{batch_id}:{line:0{LINE_DIGITS}d}"


def line_of(job_id: str) -> tuple[str, int] | None:
    """(batch id, line number) of a batch line's job id; None for any other job."""
    match = _LINE_ID.match(job_id)
    return (match[1], int(match[2])) if match else None


_WINDOW = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str) -> float:
    """`24h` (OpenAI's only value), `30m`, `2h`, `90s`, `1.5s`, `7d` -> seconds."""
    match = _WINDOW.match(window.strip())
    if not match or float(match[1]) <= 0:
        raise ValueError(f"{window!r} is not a duration: use e.g. 24h (OpenAI's), 30m, 2h or 90s")
    return float(match[1]) * _UNIT_S[match[2]]


# ---------------------------------------------------------------- the record


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = Field(0, description="lines that succeeded")
    failed: int = Field(0, description="lines that failed, cancelled and expired ones included")
    cancelled: int = Field(0, description="of the failed: batch_cancelled (never sent)")
    expired: int = Field(0, description="of the failed: batch_expired (never sent)")
    skipped: int = Field(0, description="of the failed: `budget`, refused by a budget (never sent)")


class BatchError(BaseModel):
    """A refused line of the input (OpenAI's `errors.data[]`)."""

    code: str
    line: int | None = None
    message: str
    param: str | None = None


class Errors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError] = []


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    """Token totals of the lines counted so far (OpenAI's BatchUsage)."""

    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int = 0


class ModelCounts(BaseModel):
    """One requested model's lines (a compare line counts under its models joined by commas)."""

    total: int = 0
    completed: int = 0
    failed: int = 0
    cost_usd: float = 0.0


_INT_FIELDS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


class Batch(BaseModel):
    """A batch as OpenAI's SDK reads it (`openai.types.Batch`), plus `cost_usd`, `models`, the
    `cancelled`/`expired` counts and `invalid_lines` (lines skipped with --skip-invalid)."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str
    status: Status
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None
    errors: Errors | None = None
    usage: BatchUsage = BatchUsage()
    cost_usd: float = Field(0.0, description="USD of every call of every counted line (unknown costs left out)")
    models: dict[str, ModelCounts] = {}
    invalid_lines: int = Field(0, description="input lines refused and skipped (--skip-invalid)")
    queue: str | None = Field(None, description="the queue its lines went to")
    budget_usd: float | None = Field(None, description="the batch's budget (docs: Budgets); None: none")
    budget_spent_usd: float = Field(0.0, description="USD its lines' calls spent against its budget")
    budget_reserved_usd: float = Field(0.0, description="USD reserved by its lines' calls in flight")
    callback_url: str | None = Field(None, description="where its record is POSTed when it ends (webhooks)")

    @property
    def done(self) -> int:
        return self.request_counts.completed + self.request_counts.failed

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def interrupted(self) -> bool:
        """Reaped while `validating`: its submission stopped before releasing a line."""
        return self.status == "failed" and any(e.code == INTERRUPTED for e in (self.errors.data if self.errors else []))

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> Batch:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        models: dict[str, dict[str, Any]] = {}
        for name, value in fields.items():
            if name.startswith("m."):
                model, what = name[2:].rsplit(".", 1)
                models.setdefault(model, {})[what] = value
        prompt, completion = int(fields.get("prompt_tokens", 0)), int(fields.get("completion_tokens", 0))
        counts = {k: int(fields.get(k, 0)) for k in RequestCounts.model_fields}
        return cls(
            id=fields["id"],
            endpoint=fields["endpoint"],
            input_file_id=fields.get("input_file_id", ""),
            completion_window=fields["completion_window"],
            status=fields["status"],
            **{k: int(float(fields[k])) for k in _INT_FIELDS if fields.get(k)},
            request_counts=RequestCounts(**counts),
            metadata=json.loads(fields["metadata"]) if fields.get("metadata") else None,
            errors=Errors.model_validate_json(fields["errors"]) if fields.get("errors") else None,
            usage=BatchUsage(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion),
            cost_usd=round(float(fields.get("cost_usd", 0)), 10),
            models={m: ModelCounts.model_validate(v) for m, v in sorted(models.items())},
            invalid_lines=int(fields.get("invalid_lines", 0)),
            queue=fields.get("queue"),
            budget_usd=float(fields["budget_limit"]) if fields.get("budget_limit") else None,
            budget_spent_usd=round(float(fields.get("budget_spent", 0)), 10),
            budget_reserved_usd=round(max(float(fields.get("budget_reserved", 0)), 0.0), 10),
            callback_url=fields.get("callback_url"),
        )


async def get(redis: Redis, batch_id: str) -> Batch | None:
    raw = await redis.hgetall(batch_key(batch_id))  # type: ignore[misc]  # redis-py types commands as sync-or-async
    return Batch.from_hash(raw) if raw else None


# ---------------------------------------------------------------- the worker's side


async def ended(redis: Redis, batch_id: str) -> ErrorInfo | None:
    """Why a line of this batch must not run (cancelled, or past its window), or None: one read."""
    status, expires_at = await redis.hmget(batch_key(batch_id), ["status", "expires_at"])  # type: ignore[misc]
    if status is None:
        return None  # no record (purged): the line runs as a plain job
    if status in (b"cancelling", b"cancelled"):
        return CANCELLED
    if expires_at is not None and time.time() >= float(expires_at):
        return EXPIRED
    return None


# The error of a batch reaped while `validating` (producers.batches): its submission stopped.
INTERRUPTED = "submission_interrupted"
INTERRUPTED_MESSAGE = (
    "the submission stopped before its lines were queued (its process died or lost Redis): "
    "nothing ran; submit the file again"
)
CANCELLED = ErrorInfo(type="batch_cancelled", message="the batch was cancelled before this line started")
EXPIRED = ErrorInfo(type="batch_expired", message="not started within the batch's completion window")


# Failed lines that were never sent, by error class: `skipped` is a budget's refusal (worker.limits.budgets).
_OUTCOME_OF: dict[str, Outcome] = {"batch_cancelled": "cancelled", "batch_expired": "expired", "budget": "skipped"}


def outcome(result: JobResult) -> Outcome:
    if result.status == "succeeded":
        return "succeeded"
    kind = result.error.type if result.error else None
    return _OUTCOME_OF.get(kind or "", "failed")


def requested_model(payload: Any) -> str:
    """The model a line asked for (per-model counts): `model`, or a compare line's models."""
    if isinstance(payload, dict):
        if isinstance(payload.get("model"), str):
            return str(payload["model"])[:128]
        if isinstance(payload.get("models"), list):
            return ",".join(str(m) for m in payload["models"])[:256]
    return "unknown"


def tokens(result: JobResult) -> tuple[int, int]:
    """(prompt, completion) tokens of a line: its answer's, or the sum of a compare line's answers."""
    if result.answers is not None:
        usages = [a.usage for a in result.answers if a.usage]
        return sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages)
    return (result.usage.prompt_tokens, result.usage.completion_tokens) if result.usage else (0, 0)


def _counting(redis: Redis, script: str) -> AsyncScript:
    """A script that counts a batch's lines (`batch_record_save_line`, `batch_record_end_waiting`,
    files of worker/lua/) as a redis-py Script, after the parts it calls: the outbox's
    (queue_delivery) and batch_record_finish (finish_batch)."""
    return lua.register(redis, "outbox_queue_delivery", "batch_record_finish", script)


async def save_line(redis: Redis, result: JobResult, batch_id: str, line: int, model: str) -> int:
    """Store a line's result and count it in its batch: 1 counted now, 0 counted before (a
    second run after a crash: nothing changes), -1 no such batch (store it as a plain job)."""
    prompt, completion = tokens(result)
    script = _counting(redis, "batch_record_save_line")  # EVALSHA: sent once per connection pool
    return int(
        await script(
            keys=[
                result_key(result.job_id),
                batch_key(batch_id),
                batch_done_key(batch_id),
                WEBHOOKS,
                webhook_key(delivery_of("batch", batch_id)),
            ],
            args=[
                result.model_dump_json(exclude_none=True),
                line,
                outcome(result),
                "" if result.cost is None else repr(result.cost),
                prompt,
                completion,
                model,
                int(time.time()),
                done_channel(result.job_id),
                result.status,
                delivery_of("batch", batch_id),
            ],
        )
    )


# ---------------------------------------------------------------- lines no worker will take

# (worker/lua/batch_record_end_waiting.lua ends a chunk of the lines, `end_waiting`)
# Lines read (and ended) per script call: Redis is never held for long.
END_CHUNK = 1000


async def end_waiting(redis: Redis, batch_id: str, queue_name: str) -> int:
    """End the lines of a cancelled batch (or of one past its window) that wait for a worker,
    without one: each is counted `cancelled` (`expired`) with its result, as a worker picking it
    would, so a batch cancelled while no worker runs still ends `cancelled`, every line accounted.
    Lines running are left to their workers. Returns the lines ended (0: none, or not such a batch).
    `queue_name`: where its lines went if its record does not say (`queue`)."""
    status, expires_at, queue = await redis.hmget(batch_key(batch_id), ["status", "expires_at", "queue"])  # type: ignore[misc]
    queue = queue or queue_name.encode()
    if status == b"cancelling":
        outcome_, error = "cancelled", CANCELLED
    elif status == b"in_progress" and expires_at is not None and time.time() >= float(expires_at):
        outcome_, error = "expired", EXPIRED
    else:
        return 0
    script = _counting(redis, "batch_record_end_waiting")
    delivery = delivery_of("batch", batch_id)
    keys = [
        batch_key(batch_id),
        batch_done_key(batch_id),
        bulk_key(queue.decode()),
        queue.decode(),
        WEBHOOKS,
        webhook_key(delivery),
    ]
    ended, start = 0, 0
    while entries := await redis.lrange(batch_lines_key(batch_id), start, start + END_CHUNK - 1):  # type: ignore[misc]
        start += len(entries)
        numbers = [int(json.loads(e)[0]) for e in entries]
        ids = [line_job_id(batch_id, n) for n in numbers]
        records = await redis.mget([job_key(i) for i in ids])
        now = time.time()
        args: list[Any] = [outcome_, now, delivery, JOB_PREFIX, IN_PROGRESS_PREFIX, RETRY_PREFIX, RESULT_PREFIX]
        args.append(DONE_PREFIX)
        for number, job_id, raw in zip(numbers, ids, records, strict=True):
            if raw is not None:  # no record: the line ran (or never was queued): nothing waits under it
                args += [number, job_id, *_waiting_line(job_id, raw, error, now)]
        if len(args) > 8:
            done = int(await script(keys=keys, args=args))
            if done < 0:
                break
            ended += done
    return ended


def _waiting_line(job_id: str, raw: bytes, error: ErrorInfo, now: float) -> tuple[str, str]:
    """(requested model, result JSON) of a line ended before a worker took it."""
    try:
        record = json.loads(raw)
        payload = record["a"][0]
        kind, enqueued = record.get("f"), record.get("et")
    except (ValueError, KeyError, IndexError, TypeError):
        payload, kind, enqueued = {}, None, None
    result = JobResult(
        job_id=job_id,
        kind=kind if isinstance(kind, str) else None,
        source=payload.get("source") if isinstance(payload, dict) else None,
        status="failed",
        runs=0,
        enqueued_at=datetime.fromtimestamp(enqueued / 1000, UTC) if isinstance(enqueued, int) else None,
        finished_at=datetime.fromtimestamp(now, UTC),
        error=error,
    )
    return requested_model(payload), result.model_dump_json(exclude_none=True)
