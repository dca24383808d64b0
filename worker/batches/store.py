"""Batches in OpenAI's Batch API format: submit a JSONL file of requests, follow it, read its
results in OpenAI's output shape, cancel it, list them.

    async with Producer() as producer:      # producer.batches: a BatchStore
        batch = await producer.batches.submit("requests.jsonl", completion_window="24h")
        batch = await producer.batches.wait(batch.id)
        async for line in producer.batches.results(batch.id):   # input order
            print(line["custom_id"], line["error"] or line["response"]["body"]["choices"][0])

The input is read as a stream and validated whole before anything reaches Redis (worker.batches.format:
a batch with an invalid line is refused, `BatchRejected`, every bad line with its number, param and
message, unless `skip_invalid`). Valid lines are spooled to a temporary file, then written to
Redis in pipelined chunks and released to the queue at once (`_release`, the one place that
decides where batch lines are queued). The worker's side is worker.batches.record.

A batch is created atomically under its id (one script: nothing happens if the id exists), and
every write after that is fenced by the submission's `owner` token in the record: a caller
giving its own `batch_id` (a schedule's tick, worker.batches.schedules) submits it at most once, and a
submission that lost its record to another (which took over a dead one's) writes nothing more.
Until its lines are released the record holds the submission's lease, renewed while it writes:
a submission that died is reaped by the first read once its lease lapsed (`get`: `failed`,
nothing queued; a read before that sends nothing more than the record's read). Every
script of a submission can be sent again after a lost answer (a retrying client) and does its
work once; a submission whose release ran but whose answer was lost returns the batch.

`get` also ends what no worker may come for: the waiting lines of a cancelled batch, or of one
past its window (worker.batches.record.end_waiting), so a cancel needs no running worker. That reads
every line, so it is done by one reader at a time, at most every SWEEP_S per batch: the first
read after the cancel (the cancel itself) or the window's end does it at once; a batch polled by
many readers (`--follow`, a dashboard) is not read whole on each poll.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import IO, Any, Unpack

import orjson
from redis.exceptions import RedisError

from ..contract.keys import (
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
from ..contract.models import JobResult
from ..contract.records import JobRecords
from ..limits import budgets
from ..lua import registry as lua
from ..outputs import outbox
from ..outputs.outbox import Delivery
from ..process import wake
from . import record as wb
from .format import (
    MAX_ERRORS_KEPT,
    BatchRejected,
    Checked,
    Source,
    SubmitOptions,
    budget_of,
    check_callback,
    check_lines,
    check_options,
    metadata_of,
    output_line,
    read_lines,
    url_error,
    window_seconds,
)
from .record import Batch, BatchError, Errors

# Lines written to Redis per pipelined round trip (and at most this many bytes of records).
CHUNK_LINES = 1000
CHUNK_BYTES = 8 * 1024 * 1024
# A cancelled or expired batch's waiting lines are swept at most this often (see above).
SWEEP_S = 5.0


class BatchTakenOver(RuntimeError):
    """The batch record is no longer this submission's (another took over the id): nothing more
    was written."""


class BatchStore:
    """Batches on the Redis, queue and settings of `records` (worker.contract.records), whose checks a
    line's job passes (bounds; its source, a tenant's). `producer.batches` is one
    (producers.batches); a worker's scheduler makes its own."""

    def __init__(self, records: JobRecords) -> None:
        self.records = records
        self.redis = records.redis
        self.settings = records.settings
        self.queue_name = records.queue_name
        # its scripts: worker/lua/batch_store_<name>.lua
        self._lua_create = lua.register(self.redis, "batch_store_create")
        self._lua_keep = lua.register(self.redis, "batch_store_keep")
        self._lua_stage = lua.register(self.redis, "batch_store_stage")
        self._lua_release = lua.register(self.redis, "wake", "batch_store_release", **wake.CONSTANTS)
        self._lua_drop_unreleased = lua.register(self.redis, "batch_store_drop_unreleased")
        self._lua_reap = lua.register(self.redis, "batch_store_reap")
        self._lua_drop_staged = lua.register(self.redis, "batch_store_drop_staged")
        self._lua_cancel = lua.register(self.redis, "batch_store_cancel")

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
        `budget_usd`: the batch's budget (worker.limits.budgets): once its lines' calls have spent it, the
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
            check_callback(callback_url, self.settings)
        if batch_id is not None:
            if not wb.BATCH_ID.match(batch_id):
                message = "a batch id is batch_<32 hex digits> or batch_sched_<schedule>_<yyyymmddThhmmssZ>"
                raise BatchRejected([BatchError(code="invalid_batch_id", message=message, param="batch_id")], 0)
            existing = await self.get(batch_id)
            if existing is not None:  # cheap early no-op; the create below is the atomic check
                return existing, False
        window_s = window_seconds(completion_window, self.settings.batch_max_window_s)
        meta = metadata_of(metadata)
        budget = budget_of(budget_usd)
        if endpoint is not None and endpoint not in wb.ENDPOINTS:
            bad = url_error(endpoint)
            raise BatchRejected([BatchError(code=bad.code, message=bad.message, param="endpoint")], 0)
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        with tempfile.TemporaryFile() as spool:
            # validation is CPU work: in a thread, so a worker's event loop (leases, jobs) runs on
            checked = await asyncio.to_thread(
                check_lines,
                read_lines(source, self.settings),
                spool,
                endpoint,
                skip_invalid,
                self.records.record,
                self.settings.batch_max_line_bytes,
            )
            spool.seek(0)
            return await self._write(
                spool, checked, window_s, completion_window, meta, name, batch_id, callback_url, budget
            )

    async def _write(
        self,
        spool: IO[bytes],
        checked: Checked,
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
            "queue": self.queue_name,
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
        lease_ms = int(self.settings.lease_s * 1000)
        created = await self._lua_create(
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
        while True:
            try:
                if not await self._lua_keep(keys=[batch_key(batch_id)], args=[owner, lease_ms]):
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
        keys = [batch_key(batch_id), batch_lines_key(batch_id), batch_staged_key(batch_id), BATCHES]
        return int(await self._lua_drop_unreleased(keys=keys, args=[batch_id, owner])) == 1

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
        if int(await self._lua_stage(keys=[batch_key(batch_id), staged, lines_key], args=args)) < 0:
            raise BatchTakenOver(f"batch {batch_id} is no longer this submission's: stopped writing its lines")

    async def _release(self, batch_id: str, owner: str) -> int:
        """Queue a batch's lines, all at once: the one place that decides where batch lines go.
        -1: no such batch, -2: not this submission's (`owner`), else the lines released."""
        now = time.time()
        keys = [batch_key(batch_id), batch_staged_key(batch_id), bulk_key(self.queue_name)]
        keys.append(wake_key(self.queue_name))
        return int(await self._lua_release(keys=keys, args=[int(now), owner, repr(self.records.bulk_stride(None))]))

    # ------------------------------------------------------------ read, follow, cancel, list

    async def get(self, batch_id: str) -> Batch | None:
        """The batch's record, or None if there is none (unknown, or purged BATCH_TTL_S after its window).

        A batch that should have ended is ended first, whether a worker runs or not: one whose
        submission died before releasing its lines (its lease ran out) is reaped (`failed`), and
        the waiting lines of a `cancelling` one, or of one past its window, are counted `cancelled`
        (`expired`) at once (worker.batches.record.end_waiting); lines running are left to their workers."""
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
        return await wb.end_waiting(self.redis, batch_id, self.queue_name)

    async def _reap(self, batch: Batch) -> bool:
        """Reap a batch whose submission's lease ran out before it released the lines: True if it was."""
        stopped = BatchError(code=wb.INTERRUPTED, message=wb.INTERRUPTED_MESSAGE)
        errors = Errors(data=[stopped, *(batch.errors.data if batch.errors else [])][:MAX_ERRORS_KEPT])
        keys = [batch_key(batch.id), batch_lines_key(batch.id)]
        if not await self._lua_reap(keys=keys, args=[int(time.time()), errors.model_dump_json()]):
            return False
        # their job records, a chunk at a time
        while await self._lua_drop_staged(keys=[batch_staged_key(batch.id)], args=[JOB_PREFIX, CHUNK_LINES]):
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
        status = await self._lua_cancel(keys=[batch_key(batch_id)], args=[int(time.time())])
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
