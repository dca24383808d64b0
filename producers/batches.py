"""Batches in OpenAI's Batch API format: submit a JSONL file of requests, follow it, read its
results in OpenAI's output shape, cancel it, list them.

    async with Producer() as producer:
        batch = await producer.batches.submit("requests.jsonl", completion_window="24h")
        batch = await producer.batches.wait(batch.id)
        async for line in producer.batches.results(batch.id):   # input order
            print(line["custom_id"], line["error"] or line["response"]["body"]["choices"][0])

A line is OpenAI's `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`;
the body is validated by the job contract (worker.models) with the same refusals and words as
`Producer.chat`. Our own options go under `body.llm_router` (fallbacks, max_wait_s,
gemini_native, source). `url: "/v1/llm-router/compare"` with `body.models` is a compare line.

The input is read as a stream and validated whole before anything reaches Redis: a batch with
an invalid line is refused (`BatchRejected`, every bad line with its number, param and
message) unless `skip_invalid`. Valid lines are spooled to a temporary file, then written to
Redis in pipelined chunks and released to the queue at once (`_release`, the one place that
decides where batch lines are queued). The worker's side is worker.batches.

A batch is created atomically under its id (one script: nothing happens if the id exists), and
every write after that is fenced by the submission's `owner` token in the record: a caller
giving its own `batch_id` (a schedule's tick, worker.schedules) submits it at most once, and a
submission that lost its record to another (which took over a dead one's) writes nothing more.
Until its lines are released the record holds the submission's lease, renewed while it writes:
a submission that died is reaped by the first read once its lease lapsed (`get`: `failed`,
nothing queued; a read before that sends nothing more than the record's read). Every
script of a submission can be sent again after a lost answer (a retrying client) and does its
work once; a submission whose release ran but whose answer was lost returns the batch.

`get` also ends what no worker may come for: the waiting lines of a cancelled batch, or of one
past its window (worker.batches.end_waiting), so a cancel needs no running worker. That reads
every line, so it is done by one reader at a time, at most every SWEEP_S per batch: the first
read after the cancel (the cancel itself) or the window's end does it at once; a batch polled by
many readers (`--follow`, a dashboard) is not read whole on each poll.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import string
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypedDict, Unpack

import orjson
from pydantic import ValidationError
from redis.exceptions import RedisError

from worker import batches as wb
from worker import budgets, outbox, wake, webhooks
from worker.batches import Batch, BatchError, Errors
from worker.keys import (
    BATCHES,
    JOB_EXPIRES_EXTRA_MS,
    JOB_PREFIX,
    batch_key,
    batch_lines_key,
    batch_staged_key,
    batch_swept_key,
    bulk_key,
    job_key,
    result_key,
    wake_key,
)
from worker.models import JOB_KINDS, JobBase, JobResult, check_callback_url, describe_validation_error, shown
from worker.outbox import Delivery

from .api import JobRejected

if TYPE_CHECKING:
    from .api import Producer

# Lines written to Redis per pipelined round trip (and at most this many bytes of records).
CHUNK_LINES = 1000
CHUNK_BYTES = 8 * 1024 * 1024
# Longest custom_id; at most this many refused lines are kept in a batch record (all are reported).
MAX_CUSTOM_ID = 512
# A cancelled or expired batch's waiting lines are swept at most this often (see above).
SWEEP_S = 5.0
MAX_ERRORS_KEPT = 1000
MAX_METADATA = 16
# Options of ours a line may give under body.llm_router, by kind.
EXTRAS_KEY = "llm_router"
EXTRAS = {"chat": ("fallbacks", "max_wait_s", "gemini_native", "source", "cache"), "compare": ("source", "cache")}
_LINE_KEYS = ("custom_id", "method", "url", "body")

Line = bytes | str | dict[str, Any]
Source = str | os.PathLike[str] | Iterable[Line]


class BatchRejected(ValueError):
    """The input was refused; nothing was enqueued and nothing was written to Redis.
    `errors` holds every bad line (OpenAI's `{code, line, message, param}`)."""

    def __init__(self, errors: list[BatchError], lines: int) -> None:
        self.errors = errors
        self.lines = lines
        first = errors[0]
        where = f"line {first.line}: " if first.line else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"batch refused, nothing was enqueued: {where}{first.message}{more}")


class LineError(Exception):
    """One refused line (or request body): OpenAI's error `code`, the `message` and the `param`
    it names (`body.<field>` for a field of the request body)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


class _TooLarge:
    def __init__(self, size: int) -> None:
        self.size = size


# Create a batch's record, unless one exists under its id: 1 created (or created by this very
# submission: the same call sent again after its answer was lost), 0 the id is taken. The record
# holds the submission's lease (`lease_until`, ms, Redis's clock): a submission that stops
# renewing it (its process died) is reaped by the next reader (`_REAP`).
# KEYS: batch record, the batch list
# ARGV: purge_at, created_at, batch id, owner, lease ms, then field, value, ...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'owner') == ARGV[4] and 1 or 0
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'owner', ARGV[4], 'lease_until', t[1] * 1000 + math.floor(t[2] / 1000) + ARGV[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIREAT', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

# The submission's lease renewed, while the record is still its own and not released: 1, else 0.
# KEYS: batch record; ARGV: owner, lease ms
_KEEP = """
local rec = redis.call('HMGET', KEYS[1], 'owner', 'lease_until')
if rec[1] ~= ARGV[1] or not rec[2] then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'lease_until', t[1] * 1000 + math.floor(t[2] / 1000) + ARGV[2])
return 1
"""

# A batch whose submission's lease ran out before it released the lines (its process died, or
# lost Redis; `validating`, or `cancelling` if cancelled meanwhile): `failed`, with the error
# saying so; its owner is forgotten, so a stalled submission that wakes up writes nothing more.
# Nothing of it was queued. 1 reaped, 0 not.
# KEYS: batch record, line list; ARGV: now s, errors JSON
_REAP = """
local rec = redis.call('HMGET', KEYS[1], 'status', 'lease_until')
if not rec[2] or (rec[1] ~= 'validating' and rec[1] ~= 'cancelling') then return 0 end
local t = redis.call('TIME')
if t[1] * 1000 + math.floor(t[2] / 1000) <= tonumber(rec[2]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'failed_at', ARGV[1], 'errors', ARGV[2], 'interrupted', '1')
redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
redis.call('DEL', KEYS[2])
return 1
"""

# Up to ARGV[2] job records of a batch's staged (never released) lines deleted: how many.
# KEYS: staged set; ARGV: job record prefix, how many
_DROP_STAGED = """
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
"""

# Stage a chunk of lines (job records, the staged set, the line list), if the record is still
# this submission's (its `owner`): -1 it is not (taken over, or gone), else the lines staged.
# KEYS: batch record, staged set, line list
# ARGV: owner, record TTL ms, purge_at, then job key, record, job id, line entry, ...
# A line already staged is not listed again: the same chunk sent again (after a lost answer)
# stages nothing twice.
_STAGE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return -1 end
local n = 0
for i = 4, #ARGV, 4 do
  redis.call('SET', ARGV[i], ARGV[i + 1], 'PX', ARGV[2])
  if redis.call('ZADD', KEYS[2], 0, ARGV[i + 2]) == 1 then redis.call('RPUSH', KEYS[3], ARGV[i + 3]) end
  n = n + 1
end
redis.call('EXPIREAT', KEYS[3], ARGV[3])
redis.call('EXPIREAT', KEYS[2], ARGV[3])
return n
"""

# Forget a batch that was never released (still `validating`, or reaped: `interrupted`), if
# `owner` is '' or its owner: a failed submission taking itself back, or a schedule taking over a
# dead worker's tick.
# KEYS: batch record, line list, staged set, the batch list; ARGV: batch id, owner ('' any)
_DROP_UNRELEASED = """
local rec = redis.call('HMGET', KEYS[1], 'status', 'owner', 'interrupted')
if not rec[1] then return 0 end
if rec[1] ~= 'validating' and not (rec[1] == 'failed' and rec[3]) then return -1 end
if ARGV[2] ~= '' and rec[2] ~= ARGV[2] then return -1 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""


class BatchTakenOver(RuntimeError):
    """The batch record is no longer this submission's (another took over the id): nothing more
    was written."""


# Move a batch's staged lines to the queue's bulk lane and start it (unless it was cancelled
# meanwhile: its lines are queued all the same, and workers end them `batch_cancelled` without a call).
# Released lines wake one idle worker (worker.wake).
# KEYS: batch record, staged set, bulk lane, wake list
# ARGV: now s, owner
_RELEASE = (
    wake.WAKE_FUNCTION
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return -2 end
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
-- into the bulk lane from its front, in input order: two batches interleave
local front = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local base = tonumber(front[2]) or 0
for i = 1, #ids, 1000 do
  local args = {}
  for j = i, math.min(i + 999, #ids) do
    args[#args + 1] = base + j
    args[#args + 1] = ids[j]
  end
  redis.call('ZADD', KEYS[3], unpack(args))
end
redis.call('DEL', KEYS[2])
if #ids > 0 then wake(KEYS[4]) end
redis.call('HDEL', KEYS[1], 'lease_until')  -- released: the submission's lease is over
if status == 'validating' then redis.call('HSET', KEYS[1], 'status', 'in_progress', 'in_progress_at', ARGV[1]) end
return #ids
"""
)

# KEYS: batch record; ARGV: now s. Returns the status after the call (nil: no such batch).
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'validating' or status == 'in_progress' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling', 'cancelling_at', ARGV[1])
  return 'cancelling'
end
return status
"""


class SubmitOptions(TypedDict, total=False):
    """What `Batches.submit` and `Batches.create` take besides the source."""

    completion_window: str
    metadata: dict[str, str] | None
    skip_invalid: bool
    endpoint: str | None
    batch_id: str | None
    budget_usd: float | None
    callback_url: str | None


class Batches:
    """`producer.batches`: batches on the producer's Redis and queue."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.redis = producer.redis
        self.settings = producer.settings

    # ------------------------------------------------------------ submit

    async def submit(self, source: Source, **options: Unpack[SubmitOptions]) -> Batch:
        """Validate every line, then enqueue them all as one batch; returns its record.

        `source`: a path (str or Path) to a JSONL file, or an iterable of lines (bytes, str or
        dicts). `completion_window`: OpenAI's `24h`, or `30m`, `2h`, `90s`...; lines not started
        by then end `batch_expired`. `metadata`: up to 16 string pairs. `skip_invalid`: enqueue
        the valid lines and keep the refused ones in the record's `errors`. Raises
        BatchRejected (nothing written) when a line is invalid, or the input is over a limit.
        `batch_id`: the caller's own id (`batch_<32 hex>` or a schedule's
        `batch_sched_<name>_<yyyymmddThhmmssZ>`); if a batch exists under it, submit is a no-op
        and returns that batch's record (the id is claimed atomically, after validation).
        `budget_usd`: the batch's budget (worker.budgets): once its lines' calls have spent it, the
        lines left end `budget` unsent (counted as `skipped`).
        `callback_url`: POST the batch's record there, signed, when it ends (see Webhooks; its
        host must be on WEBHOOK_ALLOWED_HOSTS).
        The options are `create`'s: `completion_window="24h"`, `metadata=None`,
        `skip_invalid=False`, `endpoint=None`, `batch_id=None`, `budget_usd=None`, `callback_url=None`."""
        batch, _created = await self.create(source, **options)
        return batch

    async def create(
        self,
        source: Source,
        *,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        skip_invalid: bool = False,
        endpoint: str | None = None,
        batch_id: str | None = None,
        budget_usd: float | None = None,
        callback_url: str | None = None,
    ) -> tuple[Batch, bool]:
        """`submit`, also saying whether this call created the batch (False: the id existed)."""
        check_options(
            completion_window=completion_window,
            metadata=metadata,
            skip_invalid=skip_invalid,
            endpoint=endpoint,
            batch_id=batch_id,
            budget_usd=budget_usd,
            callback_url=callback_url,
        )
        if callback_url is not None:
            _check_callback(callback_url, self.settings)
        if batch_id is not None:
            if not wb.BATCH_ID.match(batch_id):
                message = "a batch id is batch_<32 hex digits> or batch_sched_<schedule>_<yyyymmddThhmmssZ>"
                raise BatchRejected([BatchError(code="invalid_batch_id", message=message, param="batch_id")], 0)
            existing = await self.get(batch_id)
            if existing is not None:  # cheap early no-op; the create below is the atomic check
                return existing, False
        window_s = _window(completion_window, self.settings.batch_max_window_s)
        meta = _metadata(metadata)
        budget = _budget(budget_usd)
        if endpoint is not None and endpoint not in wb.ENDPOINTS:
            bad = _url_error(endpoint)
            raise BatchRejected([BatchError(code=bad.code, message=bad.message, param="endpoint")], 0)
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        with tempfile.TemporaryFile() as spool:
            # validation is CPU work: in a thread, so a worker's event loop (leases, jobs) runs on
            checked = await asyncio.to_thread(self._check, _lines(source, self.settings), spool, endpoint, skip_invalid)
            spool.seek(0)
            return await self._write(
                spool, checked, window_s, completion_window, meta, name, batch_id, callback_url, budget
            )

    def _check(
        self, lines: Iterator[tuple[int, Line | _TooLarge]], spool: IO[bytes], endpoint: str | None, skip: bool
    ) -> _Checked:
        """Validate every line; spool the valid ones' records; refuse (BatchRejected) if any is bad."""
        checked = _Checked(endpoint)
        seen: dict[str, int] = {}
        now_ms = int(time.time() * 1000)
        number = 0
        for number, item in lines:
            try:
                custom_id, job = self._parse(item, checked, seen, number)
                _payload, record = self.producer.records.record(job, now_ms)
            except LineError as exc:
                checked.errors.append(BatchError(code=exc.code, line=number, message=exc.message, param=exc.param))
                continue
            except JobRejected as exc:
                param = "body" if exc.field == "job" else f"body.{exc.field}"
                checked.errors.append(BatchError(code="invalid_request", line=number, message=exc.message, param=param))
                continue
            seen[custom_id] = number
            model = wb.requested_model(job.model_dump(include={"model", "models"}))
            checked.models[model] += 1
            spool.write(orjson.dumps([number, custom_id, model]) + b"\t" + record + b"\n")
            checked.valid += 1
        checked.lines = number
        if checked.errors and not skip:
            raise BatchRejected(checked.errors, number)
        if not checked.valid:
            raise BatchRejected(
                checked.errors or [BatchError(code="empty_file", message="the input has no lines")], number
            )
        return checked

    def _parse(
        self, item: Line | _TooLarge, checked: _Checked, seen: dict[str, int], number: int
    ) -> tuple[str, JobBase]:
        """(custom_id, job) of one line, or a LineError naming the param and the fix."""
        if isinstance(item, _TooLarge):
            raise LineError(
                "line_too_large",
                f"the line is {item.size} bytes, over BATCH_MAX_LINE_BYTES={self.settings.batch_max_line_bytes}: "
                "shorten it or send the image by URL",
            )
        obj = item if isinstance(item, dict) else _json(item)
        if not isinstance(obj, dict):
            raise LineError("invalid_line", 'a line must be a JSON object {"custom_id", "method", "url", "body"}')
        for key in obj:
            if key not in _LINE_KEYS:
                raise LineError(
                    "invalid_line", f"{key!r} is not a field of a batch line: use custom_id, method, url, body", key
                )
        custom_id = obj.get("custom_id")
        if custom_id is None:
            raise LineError("missing_custom_id", "the line has no custom_id: give each line a unique id", "custom_id")
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
            raise LineError("invalid_custom_id", f"must be a string of 1-{MAX_CUSTOM_ID} characters", "custom_id")
        if custom_id in seen:
            raise LineError(
                "duplicate_custom_id",
                f"custom_id {custom_id!r} is already used on line {seen[custom_id]}: custom_ids must be unique",
                "custom_id",
            )
        if obj.get("method") != "POST":
            raise LineError("invalid_method", f'method must be "POST", not {obj.get("method")!r}', "method")
        url = obj.get("url")
        if url not in wb.ENDPOINTS:
            raise _url_error(url)
        if checked.endpoint is None:
            checked.endpoint = url
        elif url != checked.endpoint:
            raise LineError(
                "invalid_url",
                f"every line of a batch uses the same url ({checked.endpoint}), this one {url}: split the file",
                "url",
            )
        kind = wb.ENDPOINTS[url]
        body = obj.get("body")
        if not isinstance(body, dict):
            raise LineError(
                "invalid_body", "body must be a JSON object: the request's body (model, messages, ...)", "body"
            )
        return custom_id, request_job(kind, body)

    async def _write(
        self,
        spool: IO[bytes],
        checked: _Checked,
        window_s: float,
        window: str,
        metadata: dict[str, str] | None,
        name: str | None,
        batch_id: str | None = None,
        callback_url: str | None = None,
        budget: float | None = None,
    ) -> tuple[Batch, bool]:
        batch_id = batch_id or f"batch_{uuid.uuid4().hex}"
        owner = uuid.uuid4().hex  # this submission: every later write checks it
        now = time.time()
        expires_at = int(now + window_s)
        purge_at = expires_at + self.settings.batch_ttl_s
        record: dict[str, Any] = {
            "id": batch_id,
            "endpoint": checked.endpoint or wb.ENDPOINT_CHAT,
            "input_file_id": name or "file-" + batch_id.removeprefix("batch_"),
            "completion_window": window,
            "status": "validating",
            "created_at": int(now),
            "expires_at": expires_at,
            "purge_at": purge_at,
            "total": checked.valid,
            "queue": self.producer.queue_name,
            **{f"m.{model}.total": n for model, n in checked.models.items()},
        }
        if metadata:
            record["metadata"] = json.dumps(metadata)
        if budget is not None:
            record[budgets.BATCH_PREFIX + "limit"] = repr(budget)
        if callback_url:
            record["callback_url"] = callback_url
        if checked.errors:
            record["invalid_lines"] = len(checked.errors)
            kept = Errors(data=checked.errors[:MAX_ERRORS_KEPT])
            record["errors"] = kept.model_dump_json()
        fields = [str(x) for pair in record.items() for x in pair]
        create = self.redis.register_script(_CREATE)
        lease_ms = int(self.settings.lease_s * 1000)
        created = await create(
            keys=[batch_key(batch_id), BATCHES], args=[purge_at, now, batch_id, owner, lease_ms, *fields]
        )
        if not created:
            existing = await self.get(batch_id)  # the id is taken: a no-op
            if existing is None:
                raise BatchTakenOver(f"batch {batch_id} was taken and is gone: submit again")
            return existing, False
        keeper = asyncio.create_task(self._keep(batch_id, owner, lease_ms))
        try:
            await self._write_lines(spool, batch_id, window_s, purge_at, owner)
            if await self._release(batch_id, owner) < 0:
                raise BatchTakenOver(f"batch {batch_id} is no longer this submission's: nothing was released")
        except Exception:
            # nothing was queued: take the batch back, if still ours (its job records expire unqueued);
            # unless the release ran and only its answer was lost: the lines are queued, the batch is on
            if not await self._released(batch_id, owner):
                raise
        except BaseException:
            await self.drop_unreleased(batch_id, owner)
            raise
        finally:
            keeper.cancel()
        # cancelled meanwhile: its lines were queued just now, so a sweep before them ended none
        found = await self._get(batch_id, sweep_now=True)
        assert found is not None
        return found, True

    async def _keep(self, batch_id: str, owner: str, lease_ms: int) -> None:
        """Renew the submission's lease while it writes (a third of the lease apart); a renewal
        Redis failed is tried again at the next (the writes fail too if Redis stays away)."""
        keep = self.redis.register_script(_KEEP)
        while True:
            try:
                if not await keep(keys=[batch_key(batch_id)], args=[owner, lease_ms]):
                    return
            except RedisError:
                pass
            await asyncio.sleep(lease_ms / 3000)

    async def _released(self, batch_id: str, owner: str) -> bool:
        """After a submission's error: False once its batch is taken back (it was never released, or
        it is not its own); True if the release ran (only its answer was lost: the lines are queued)."""
        if await self.drop_unreleased(batch_id, owner):
            return False
        status, still = await self.redis.hmget(batch_key(batch_id), ["status", "owner"])  # type: ignore[misc]
        return still == owner.encode() and status not in (None, b"validating")

    async def drop_unreleased(self, batch_id: str, owner: str = "") -> bool:
        """Forget a batch whose lines were never released (status `validating`, or reaped), if
        `owner` is its submission's (or ''): True if it was dropped. Its job records expire unqueued."""
        drop = self.redis.register_script(_DROP_UNRELEASED)
        keys = [batch_key(batch_id), batch_lines_key(batch_id), batch_staged_key(batch_id), BATCHES]
        return int(await drop(keys=keys, args=[batch_id, owner])) == 1

    async def _write_lines(self, spool: IO[bytes], batch_id: str, window_s: float, purge_at: int, owner: str) -> None:
        """The job records and the line list, in pipelined chunks: the spool is read as a stream."""
        record_ttl_ms = int(window_s * 1000) + JOB_EXPIRES_EXTRA_MS
        lines_key, staged = batch_lines_key(batch_id), batch_staged_key(batch_id)
        chunk: list[tuple[bytes, bytes]] = []
        size = 0
        for raw in spool:
            head, record = raw.rstrip(b"\n").split(b"\t", 1)
            chunk.append((head, record))
            size += len(record)
            if len(chunk) >= CHUNK_LINES or size >= CHUNK_BYTES:
                await self._write_chunk(chunk, batch_id, lines_key, staged, record_ttl_ms, purge_at, owner)
                chunk, size = [], 0
        if chunk:
            await self._write_chunk(chunk, batch_id, lines_key, staged, record_ttl_ms, purge_at, owner)

    async def _write_chunk(
        self,
        chunk: list[tuple[bytes, bytes]],
        batch_id: str,
        lines_key: str,
        staged: str,
        ttl_ms: int,
        purge_at: int,
        owner: str,
    ) -> None:
        args: list[Any] = [owner, ttl_ms, purge_at]
        for head, record in chunk:
            number, custom_id, _model = orjson.loads(head)
            job_id = wb.line_job_id(batch_id, number)
            args += [job_key(job_id), record, job_id, json.dumps([number, custom_id])]
        stage = self.redis.register_script(_STAGE)
        if int(await stage(keys=[batch_key(batch_id), staged, lines_key], args=args)) < 0:
            raise BatchTakenOver(f"batch {batch_id} is no longer this submission's: stopped writing its lines")

    async def _release(self, batch_id: str, owner: str) -> int:
        """Queue a batch's lines, all at once: the one place that decides where batch lines go.
        -1: no such batch, -2: not this submission's (`owner`), else the lines released."""
        now = time.time()
        release = self.redis.register_script(_RELEASE)
        keys = [batch_key(batch_id), batch_staged_key(batch_id), bulk_key(self.producer.queue_name)]
        keys.append(wake_key(self.producer.queue_name))
        return int(await release(keys=keys, args=[int(now), owner]))

    # ------------------------------------------------------------ read, follow, cancel, list

    async def get(self, batch_id: str) -> Batch | None:
        """The batch's record, or None if there is none (unknown, or purged BATCH_TTL_S after its window).

        A batch that should have ended is ended first, whether a worker runs or not: one whose
        submission died before releasing its lines (its lease ran out) is reaped (`failed`), and
        the waiting lines of a `cancelling` one, or of one past its window, are counted `cancelled`
        (`expired`) at once (worker.batches.end_waiting); lines running are left to their workers."""
        return await self._get(batch_id, sweep_now=False)

    async def _get(self, batch_id: str, sweep_now: bool) -> Batch | None:
        if not wb.BATCH_ID.match(batch_id):
            return None
        raw = await self.redis.hgetall(batch_key(batch_id))  # type: ignore[misc]
        if not raw:
            return None
        batch = Batch.from_hash(raw)
        # the reaper only once the submission's lease has lapsed (the script checks it again, on
        # Redis's clock, the lease's: a reader whose clock is behind it reaps that much later)
        lease_until = float(raw.get(b"lease_until", 0))
        changed = bool(lease_until) and time.time() * 1000 > lease_until and await self._reap(batch)
        if not changed and (
            batch.status == "cancelling"
            or (batch.status == "in_progress" and batch.expires_at is not None and time.time() >= batch.expires_at)
        ):
            changed = await self._sweep(batch_id, sweep_now) > 0
        return await wb.get(self.redis, batch_id) if changed else batch

    async def _sweep(self, batch_id: str, now: bool) -> int:
        """End the batch's waiting lines, unless another reader did in the last SWEEP_S (`now`: do it anyway)."""
        first = await self.redis.set(batch_swept_key(batch_id), 1, px=int(SWEEP_S * 1000), nx=True)
        if not (first or now):
            return 0
        return await wb.end_waiting(self.redis, batch_id, self.producer.queue_name)

    async def _reap(self, batch: Batch) -> bool:
        """Reap a batch whose submission's lease ran out before it released the lines: True if it was."""
        stopped = BatchError(code=wb.INTERRUPTED, message=wb.INTERRUPTED_MESSAGE)
        errors = Errors(data=[stopped, *(batch.errors.data if batch.errors else [])][:MAX_ERRORS_KEPT])
        reap = self.redis.register_script(_REAP)
        keys = [batch_key(batch.id), batch_lines_key(batch.id)]
        if not await reap(keys=keys, args=[int(time.time()), errors.model_dump_json()]):
            return False
        drop = self.redis.register_script(_DROP_STAGED)  # their job records, a chunk at a time
        while await drop(keys=[batch_staged_key(batch.id)], args=[JOB_PREFIX, CHUNK_LINES]):
            pass
        return True

    async def webhook(self, batch_id: str) -> Delivery | None:
        """The batch's webhook delivery (`callback_url`), once it ended; None before, or without one."""
        return await outbox.status(self.redis, "batch", batch_id)

    async def wait(self, batch_id: str, timeout: float | None = None, poll_s: float = 0.5) -> Batch:
        """The record once the batch is final (completed, expired, cancelled); TimeoutError if not within `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = await self.get(batch_id)
            if batch is None:
                raise KeyError(f"no batch {batch_id}")
            if batch.final:
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is still {batch.status} after {timeout:g}s")
            await asyncio.sleep(poll_s)

    async def cancel(self, batch_id: str) -> Batch | None:
        """Cancel: queued lines end `batch_cancelled` without a call, running ones finish and are
        counted; the batch shows `cancelling`, then `cancelled`. A final batch is left as it is."""
        if not wb.BATCH_ID.match(batch_id):
            return None
        status = await self.redis.register_script(_CANCEL)(keys=[batch_key(batch_id)], args=[int(time.time())])
        return None if status is None else await self._get(batch_id, sweep_now=True)  # ends the lines waiting

    async def list(self, limit: int = 20, after: str | None = None) -> list[Batch]:
        """Newest first; `after`: a batch id, to page on (OpenAI's cursor)."""
        start = 0
        if after is not None:
            rank = await self.redis.zrevrank(BATCHES, after)
            if rank is None:
                return []
            start = rank + 1
        found: list[Batch] = []
        while len(found) < limit:
            ids = [i.decode() for i in await self.redis.zrevrange(BATCHES, start, start + limit - 1)]
            if not ids:
                break
            start += len(ids)
            for batch_id in ids:
                batch = await self.get(batch_id)
                if batch is None:  # purged: forget it
                    await self.redis.zrem(BATCHES, batch_id)
                    start -= 1
                elif len(found) < limit:
                    found.append(batch)
        return found

    async def results(self, batch_id: str, chunk: int = 500) -> AsyncIterator[dict[str, Any]]:
        """Every finished line in OpenAI's output shape, in input order: `error` is None for the
        output file's lines, set for the error file's. Lines not finished yet are left out."""
        lines_key = batch_lines_key(batch_id)
        start = 0
        while True:
            entries = await self.redis.lrange(lines_key, start, start + chunk - 1)  # type: ignore[misc]
            if not entries:
                return
            start += len(entries)
            parsed = [json.loads(e) for e in entries]
            raws = await self.redis.mget([result_key(wb.line_job_id(batch_id, n)) for n, _ in parsed])
            for (number, custom_id), raw in zip(parsed, raws, strict=True):
                if raw is not None:
                    yield output_line(wb.line_job_id(batch_id, number), custom_id, JobResult.model_validate_json(raw))

    async def write_results(self, batch_id: str, output: IO[str] | None, errors: IO[str] | None) -> tuple[int, int]:
        """Write the output and error JSONL (either may be None: left out); (lines written to each)."""
        counts = [0, 0]
        async for line in self.results(batch_id):
            target = output if line["error"] is None else errors
            counts[line["error"] is not None] += 1
            if target is not None:
                target.write(json.dumps(line, separators=(",", ":")) + "\n")
        return counts[0], counts[1]


class _Checked:
    """What validation found: the endpoint, valid lines (and their models), refused lines."""

    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = endpoint
        self.valid = 0
        self.lines = 0
        self.models: Counter[str] = Counter()
        self.errors: list[BatchError] = []


# ---------------------------------------------------------------- reading the input


def _lines(source: Source, settings: Any) -> Iterator[tuple[int, Line | _TooLarge]]:
    """(line number, line) from a path (read as a stream, a line at most BATCH_MAX_LINE_BYTES
    in memory) or an iterable; stops with a BatchRejected over BATCH_MAX_LINES / BATCH_MAX_BYTES."""
    max_line, max_lines, max_bytes = settings.batch_max_line_bytes, settings.batch_max_lines, settings.batch_max_bytes
    total = 0
    items = (
        _read_file(Path(source), max_line) if isinstance(source, (str, os.PathLike)) else _read_items(source, max_line)
    )
    for number, (item, size) in enumerate(items, start=1):
        total += size
        if number > max_lines:
            raise BatchRejected(
                [
                    BatchError(
                        code="too_many_lines", line=number, message=f"over BATCH_MAX_LINES={max_lines}: split the file"
                    )
                ],
                number,
            )
        if total > max_bytes:
            raise BatchRejected(
                [
                    BatchError(
                        code="file_too_large", line=number, message=f"over BATCH_MAX_BYTES={max_bytes}: split the file"
                    )
                ],
                number,
            )
        yield number, item


def _read_file(path: Path, max_line: int) -> Iterator[tuple[Line | _TooLarge, int]]:
    with path.open("rb") as f:
        while raw := f.readline(max_line + 2):  # a line, its \r\n included, or the start of a longer one
            size = len(raw)
            if len(raw) == max_line + 2 and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line, a chunk at a time
                    raw = f.readline(1 << 20)
                    size += len(raw)
                yield _TooLarge(size), size
                continue
            content = raw.rstrip(b"\r\n")
            yield (_TooLarge(size) if len(content) > max_line else content), size


def _read_items(items: Iterable[Line], max_line: int) -> Iterator[tuple[Line | _TooLarge, int]]:
    for item in items:
        if isinstance(item, dict):
            size = content = len(json.dumps(item))
        else:
            item = item.rstrip(b"\r\n") if isinstance(item, bytes) else item.rstrip("\r\n")
            content = len(item) if isinstance(item, bytes) else len(item.encode())
            size = content + 1
        yield (_TooLarge(size) if content > max_line else item), size


def _json(item: bytes | str) -> Any:
    try:
        text = item.decode() if isinstance(item, bytes) else item
    except UnicodeDecodeError:
        raise LineError("invalid_json", "the line is not UTF-8 text") from None
    if not text.strip():
        raise LineError("empty_line", "the line is blank: remove it (one request a line)")
    try:
        return orjson.loads(text)
    except ValueError as exc:
        raise LineError("invalid_json", f"the line is not valid JSON ({exc})") from None


def request_job(kind: str, body: dict[str, Any], *, bulk: bool = True) -> JobBase:
    """A request body in OpenAI's shape (a batch line's, or `POST /v1/chat/completions`') as a
    job of the contract, our options under `llm_router`; or a LineError naming `body.<field>`.
    A batch line is a bulk job: it waits in the bulk lane and never holds up interactive jobs."""
    body = dict(body)
    extras = body.pop(EXTRAS_KEY, None) or {}
    if not isinstance(extras, dict):
        raise LineError("invalid_request", "must be an object of llm-router options", f"body.{EXTRAS_KEY}")
    for name in extras:
        if name not in EXTRAS[kind]:
            raise LineError(
                "invalid_request",
                f"{name!r} is not an llm-router option of a {kind} line: use {', '.join(EXTRAS[kind])}",
                f"body.{EXTRAS_KEY}.{name}",
            )
    if "callback_url" in body or "callback_url" in extras:
        at = f"body.{EXTRAS_KEY}.callback_url" if "callback_url" in extras else "body.callback_url"
        raise LineError(
            "invalid_request",
            "is not taken here: a batch's lines report through the batch's callback_url (sent when it ends), "
            "a job's goes in its body on POST /v1/jobs",
            at,
        )
    for name in ("kind", "enqueued_at", *EXTRAS[kind]):
        if name in body:
            where = f"body.{EXTRAS_KEY}.{name}" if name in EXTRAS[kind] else None
            fix = f": it goes under {where}" if where else ""
            raise LineError("invalid_request", f"{name!r} is not a request parameter{fix}", f"body.{name}")
    if "max_completion_tokens" in body:  # OpenAI's newer name for max_tokens
        if "max_tokens" in body:
            raise LineError("invalid_request", "give max_tokens or max_completion_tokens, not both", "body.max_tokens")
        body["max_tokens"] = body.pop("max_completion_tokens")
    try:
        return JOB_KINDS[kind].model_validate({**body, **extras, "bulk": bulk})
    except ValidationError as exc:
        field, message = describe_validation_error(exc)
        top = field.split(".")[0]
        param = f"body.{EXTRAS_KEY}.{field}" if top in extras else "body" if field == "job" else f"body.{field}"
        raise LineError("invalid_request", message, param) from None


def request_schema(kind: str, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON schema of what `request_job(kind, ...)` accepts: the job's fields as OpenAI's
    request body (no `kind`, `enqueued_at` or `bulk`), our options under `llm_router`, and
    max_tokens or max_completion_tokens, not both. Its `$defs` are the job model's."""
    schema = JOB_KINDS[kind].model_json_schema(ref_template=ref_template)
    properties = schema["properties"]
    extras = {name: properties.pop(name) for name in EXTRAS[kind] if name in properties}
    for name in ("kind", "enqueued_at", "bulk", "callback_url"):  # a job's callback_url: POST /v1/jobs only
        properties.pop(name, None)
    properties[EXTRAS_KEY] = {
        "type": "object",
        "properties": extras,
        "additionalProperties": False,
        "description": "llm-router's options",
    }
    schema["required"] = [name for name in schema.get("required", []) if name in properties]
    schema["title"] = f"{schema.get('title', kind)}Request"
    if "max_completion_tokens" in properties:
        schema["not"] = {"required": ["max_tokens", "max_completion_tokens"]}
    return schema


def _url_error(url: Any) -> LineError:
    return LineError("invalid_url", f"url must be {' or '.join(wb.ENDPOINTS)}, not {url!r}", "url")


def _check_callback(url: str, settings: Any) -> None:
    try:
        problem = webhooks.refusal(check_callback_url(url), settings)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        raise BatchRejected([BatchError(code="invalid_callback_url", message=problem, param="callback_url")], 0)


# Each option of a batch create: the types it takes (None: it may be left out), what it is, its
# refusal's code. Checked first, so a wrong type is refused naming the field, never a TypeError.
_OPTION_TYPES: dict[str, tuple[tuple[type, ...], str, str]] = {
    "completion_window": ((str,), "a string such as 24h", "invalid_completion_window"),
    "metadata": ((dict, type(None)), "an object of string pairs", "invalid_metadata"),
    "skip_invalid": ((bool,), "true or false", "invalid_skip_invalid"),
    "endpoint": ((str, type(None)), f"a string: {' or '.join(wb.ENDPOINTS)}", "invalid_url"),
    "batch_id": ((str, type(None)), "a string: batch_<32 hex digits>", "invalid_batch_id"),
    "budget_usd": ((int, float, type(None)), "a number of USD", "invalid_budget"),
    "callback_url": ((str, type(None)), "a string: an https:// URL", "invalid_callback_url"),
}


def check_options(**options: Any) -> None:
    """BatchRejected naming the first option of `options` whose value has the wrong type (a
    number for completion_window, a list for metadata...)."""
    for name, value in options.items():
        types, what, code = _OPTION_TYPES[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            message = f"{name} must be {what}, not {type(value).__name__} {shown(value)}"
            raise BatchRejected([BatchError(code=code, message=message, param=name)], 0)


def _window(window: str, longest_s: float) -> float:
    """The window in seconds, at most BATCH_MAX_WINDOW_S (checked before anything is written)."""
    try:
        seconds = wb.window_seconds(window)
        if not seconds <= longest_s:
            raise ValueError(
                f"{window!r} is over BATCH_MAX_WINDOW_S={longest_s:g} seconds: use a shorter window "
                "(a number and s, m, h or d: 24h, 90m)"
            )
        return seconds
    except ValueError as exc:
        raise BatchRejected(
            [BatchError(code="invalid_completion_window", message=str(exc), param="completion_window")], 0
        ) from None


def _budget(budget_usd: Any) -> float | None:
    """A batch's budget: a finite number of USD, 0 or more (0: only free models run)."""
    if budget_usd is None:
        return None
    if isinstance(budget_usd, bool) or not isinstance(budget_usd, (int, float)) or not 0 <= budget_usd < math.inf:
        message = f"budget_usd must be a number of USD, 0 or more, not {budget_usd!r}"
        raise BatchRejected([BatchError(code="invalid_budget", message=message, param="budget_usd")], 0)
    return float(budget_usd)


def _metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    if not metadata:
        return None
    problem = None
    if len(metadata) > MAX_METADATA:
        problem = f"at most {MAX_METADATA} pairs, not {len(metadata)}"
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str) or not 0 < len(k) <= 64 or len(v) > 512:
            problem = f"{k!r}: keys are strings of 1-64 characters, values strings of up to 512"
    if problem:
        raise BatchRejected([BatchError(code="invalid_metadata", message=problem, param="metadata")], 0)
    return dict(metadata)


# ---------------------------------------------------------------- the output shape


def output_line(job_id: str, custom_id: str, result: JobResult) -> dict[str, Any]:
    """One line of OpenAI's output (succeeded) or error file (failed), plus `llm_router`: what
    the service adds (the model that answered, calls, runs, cost, latency)."""
    extra = {
        "model": result.model,
        "attempts": len(result.attempts),
        "runs": result.runs,
        "cost": result.cost,
        "cost_source": result.cost_source,
        "cached": result.cached,
        "latency_s": result.latency_s,
    }
    line: dict[str, Any] = {"id": job_id, "custom_id": custom_id, "response": None, "error": None}
    if result.status == "succeeded":
        call_id = next((a.call_id for a in reversed(result.attempts) if a.ok), None)
        line["response"] = {"status_code": 200, "request_id": call_id, "body": completion_body(job_id, result)}
    else:
        error = result.error
        code, message = (error.type, error.message) if error else ("failed", "the request failed")
        if error is not None and error.status:  # the gateway answered: its response, as OpenAI gives it
            line["response"] = {
                "status_code": error.status,
                "request_id": error.request_id,
                "body": {"error": {"message": error.message, "type": error.type, "code": error.code}},
            }
        line["error"] = {"code": code, "message": message}
    line[EXTRAS_KEY] = extra
    return line


def completion_body(job_id: str, result: JobResult) -> dict[str, Any]:
    """A succeeded job's answer as OpenAI's chat completion (`usage.cost` included); a compare
    job's as our `llm_router.compare` object."""
    created = int(result.finished_at.timestamp()) if result.finished_at else int(time.time())
    prompt, completion = wb.tokens(result)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost": result.cost,
    }
    if result.answers is not None:  # a compare line: our extension of the shape
        return {
            "id": f"cmp-{job_id}",
            "object": "llm_router.compare",
            "created": created,
            "answers": [
                a.model_dump(
                    include={"model", "status", "content", "finish_reason", "usage", "cost", "latency_s", "error"}
                )
                for a in result.answers
            ],
            "usage": usage,
        }
    message: dict[str, Any] = {"role": "assistant", "content": result.content}
    if result.tool_calls:
        message["tool_calls"] = result.tool_calls
    if result.function_call:
        message["function_call"] = result.function_call
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": created,
        "model": result.model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}],
        "usage": usage,
    }


# ---------------------------------------------------------------- a file of prompts


def prompt_lines(
    path: str | os.PathLike[str], template: str, model: str, *, system: str | None = None, **params: Any
) -> Iterator[dict[str, Any]]:
    """Batch lines from a CSV (a header row; `template` names its columns, e.g. "Summarise:
    {text}") or a text file (one prompt a line, `{text}`; blank lines skipped). `custom_id` is
    the row's `id` column, else its row number. `params`: body parameters (max_tokens, ...).
    A template naming a column the file lacks is a ValueError here, before any line is read."""
    path = Path(path)
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            columns = next(csv.reader(f), [])
        missing = names - set(columns)
        if missing:
            raise ValueError(
                f"the template names {', '.join(sorted(missing))}, not a column of {path.name} "
                f"(columns: {', '.join(columns)})"
            )
    elif names - {"text"}:
        raise ValueError("a text file has one prompt a line: the template can name only {text}")
    head = [{"role": "system", "content": system}] if system else []
    return _prompt_lines(path, template, model, head, params)


def _prompt_lines(
    path: Path, template: str, model: str, head: list[dict[str, str]], params: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        csv_file = path.suffix.lower() == ".csv"
        rows: Iterable[dict[str, str]] = csv.DictReader(f) if csv_file else ({"text": t.rstrip("\r\n")} for t in f)
        for number, row in enumerate(rows, start=1):
            if not csv_file and not row["text"].strip():
                continue  # a blank line of a text file is no prompt
            custom_id = (row.get("id") or "").strip() or str(number)
            messages = [*head, {"role": "user", "content": template.format(**row)}]
            body = {"model": model, "messages": messages, **params}
            yield {"custom_id": custom_id, "method": "POST", "url": wb.ENDPOINT_CHAT, "body": body}
