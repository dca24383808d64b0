"""A streaming job's live events: what the worker publishes to the job's Redis stream as the
gateway's chunks arrive, for the ingress to relay (`GET /v1/jobs/{id}/events`, and
`POST /v1/chat/completions` with `stream: true`).

The stream `llm-router:events:<job_id>` (keys.events_key) holds entries `{event, data, w}`,
data JSON (`w`: the id of the write that added it), in order:

- `delta`: `{"model", "choices": [{"index", "delta", "finish_reason", "logprobs"?}]}`: the
  chunks' deltas as OpenAI streams them (`role`, `content`, `tool_calls` pieces,
  `function_call`, `refusal`), coalesced: several chunks' deltas merged into one entry (text
  joined, a tool call's argument fragments joined by its index), at most every
  STREAM_EVENTS_FLUSH_MS (the first delta of an attempt at once), sooner past FLUSH_CHARS.
- `reset`: `{"model", "error"}`: the attempt that produced the deltas so far failed mid-stream
  (a cut stream, an error event) and the job goes on (the same model again, the next model of
  its chain, or a later run of the job): discard the text received so far; the next deltas
  start the answer over.
- `result`: the result record (`JobResult`, as `GET /v1/jobs/{id}` returns it), cost included,
  whether the job succeeded or failed; the last entry. It is written before the result itself
  is stored, so a reader that sees the result stored finds it in the stream.

Each write is one round trip, one script: XADD with an approximate MAXLEN, EXPIRE, PUBLISH on
`llm-router:events-posted:<job_id>` to wake the ingress's readers. Publishing is
best-effort: a failed write is logged and the job goes on (its readers fall back to the
stored result).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from ..contract.keys import events_key, events_posted_channel
from ..contract.models import JOB_KINDS, Choice, ErrorInfo, JobResult, RoutedJob
from ..lua import registry as lua

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from ..contract.settings import Settings

log = logging.getLogger("llm_router.events")

DELTA, RESET, RESULT = "delta", "reset", "result"
# A delta buffer holding this many characters is published at once, whatever the interval.
FLUSH_CHARS = 1024
# Delta fields whose pieces are joined, the rest keep their latest value (OpenAI's delta shape).
_JOINED = ("content", "refusal", "reasoning_content")

OnDelta = Callable[[list[dict[str, Any]]], Awaitable[None]]


def merge_delta(into: dict[str, Any], piece: dict[str, Any]) -> int:
    """Merge one chunk's `delta` into `into`; returns the characters of output it added."""
    added = 0
    for name, value in piece.items():
        if name in _JOINED and isinstance(value, str):
            into[name] = (into.get(name) or "") + value
            added += len(value)
        elif name == "tool_calls" and isinstance(value, list):
            added += _merge_tool_calls(into.setdefault("tool_calls", []), value)
        elif name == "function_call" and isinstance(value, dict):
            added += _merge_call(into.setdefault("function_call", {}), value)
        elif value is not None or name not in into:
            into[name] = value
    return added


def _merge_tool_calls(calls: list[dict[str, Any]], pieces: list[Any]) -> int:
    added = 0
    for piece in pieces:
        if not isinstance(piece, dict):
            continue
        index = piece.get("index", 0)
        call = next((c for c in calls if c.get("index", 0) == index), None)
        if call is None:
            call = {"index": index}
            calls.append(call)
        for name, value in piece.items():
            if name == "function" and isinstance(value, dict):
                added += _merge_call(call.setdefault("function", {}), value)
            elif value is not None and name != "index":
                call.setdefault(name, value)
    return added


def _merge_call(call: dict[str, Any], piece: dict[str, Any]) -> int:
    added = 0
    for name, value in piece.items():
        if isinstance(value, str) and name in ("name", "arguments"):
            call[name] = call.get(name, "") + value
            added += len(value)
        elif value is not None:
            call[name] = value
    return added


class Deltas:
    """Choice deltas waiting to be published (or relayed), merged per choice index."""

    def __init__(self) -> None:
        self.choices: dict[int, dict[str, Any]] = {}
        self.chars = 0

    def __bool__(self) -> bool:
        return bool(self.choices)

    def add(self, choices: list[Any]) -> None:
        """Take a chunk's `choices` (or a delta event's)."""
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            state = self.choices.setdefault(index, {"index": index, "delta": {}, "finish_reason": None})
            self.chars += merge_delta(state["delta"], choice.get("delta") or {})
            state["finish_reason"] = choice.get("finish_reason") or state["finish_reason"]
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):
                kept = state.setdefault("logprobs", {})
                for key, entries in logprobs.items():
                    if isinstance(entries, list):
                        kept.setdefault(key, []).extend(entries)

    def take(self, model: str | None) -> dict[str, Any]:
        """A delta event's data for what is buffered (by choice index), and an empty buffer."""
        data = {"model": model, "choices": [self.choices[i] for i in sorted(self.choices)]}
        self.clear()
        return data

    def clear(self) -> None:
        self.choices, self.chars = {}, 0


def streams(kind: str, payload: Any, settings: Settings) -> bool:
    """Whether a job publishes live events: a chat/vision job (one model answers) with `stream`."""
    cls = JOB_KINDS.get(kind)
    return (
        settings.stream_events_ttl_s > 0
        and cls is not None
        and issubclass(cls, RoutedJob)
        and isinstance(payload, dict)
        and payload.get("stream") is True
    )


class JobEvents:
    """One run of a streaming job publishing its events. `on_delta(model)` is the client's
    hook for an attempt; `attempt_ended` closes the attempt (its last deltas, or a reset);
    `close` writes the result event."""

    def __init__(self, redis: Redis, job_id: str, settings: Settings, run: int = 1) -> None:
        self.redis = redis
        self.key = events_key(job_id)
        self.channel = events_posted_channel(job_id)
        self.ttl_s = settings.stream_events_ttl_s
        self.maxlen = settings.stream_events_maxlen
        self.flush_s = settings.stream_events_flush_ms / 1000
        self.model: str | None = None
        self.deltas = Deltas()
        # deltas published since the last reset: a failed attempt tells readers to discard them
        self.dirty = False
        # a later run cannot know what an earlier one published: its first deltas follow a reset
        self.run = run
        self.stale = run > 1
        self.writes = 0
        self._sequence = 0  # of this run's writes: with the run, each write's id
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._flushed_at = float("-inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = self._broken = False
        # one write: the entries, the stream's TTL and the wake-up, in one command
        self._script = lua.register(redis, "events_write")

    def on_delta(self, model: str) -> OnDelta:
        """The hook the client calls with each chunk's `choices` during one attempt at `model`."""
        self.model = model
        return self._delta

    async def _delta(self, choices: list[dict[str, Any]]) -> None:
        self.deltas.add(choices)
        loop = asyncio.get_running_loop()
        since = loop.time() - self._flushed_at
        if self.deltas.chars >= FLUSH_CHARS or since >= self.flush_s:
            await self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.flush_s - since, self._flush_later)

    def _flush_later(self) -> None:
        self._timer = None
        task = asyncio.create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def flush(self) -> None:
        """Publish the buffered deltas now (one entry)."""
        self._cancel_timer()
        async with self._lock:
            if self.deltas and not self._closed:
                self._flushed_at = asyncio.get_running_loop().time()
                await self._write([*self._rerun(), (DELTA, self.deltas.take(self.model))])
                self.dirty = True

    async def attempt_ended(self, model: str, error: ErrorInfo | None) -> None:
        """An attempt's end. Failed: its unpublished deltas dropped, and a reset if any of its
        deltas (or an earlier run's) were published. Succeeded: its last deltas go out with the
        result (`close`, a moment later: one write fewer), or sooner with the timer."""
        if error is None:
            return
        self._cancel_timer()
        async with self._lock:
            self.deltas.clear()
            if (self.dirty or self.stale) and not self._closed:
                await self._write([(RESET, {"model": model, "error": error.model_dump(exclude_none=True)})])
                self.dirty = self.stale = False
                self._flushed_at = float("-inf")  # the next attempt's first delta goes out at once

    def _rerun(self) -> list[tuple[str, dict[str, Any]]]:
        """A reset before a later run's first deltas (what an earlier run published is void)."""
        if not self.stale:
            return []
        self.stale = False
        message = f"the job runs again (run {self.run}): an earlier run was cut short"
        return [(RESET, {"model": None, "error": {"type": "rerun", "message": message}})]

    async def close(self, result: JobResult) -> None:
        """The last entry: the result record (after any deltas still buffered)."""
        self._cancel_timer()
        async with self._lock:
            entries: list[tuple[str, dict[str, Any]]] = []
            if self.deltas:
                entries += [*self._rerun(), (DELTA, self.deltas.take(self.model))]
            entries.append((RESULT, result.model_dump(mode="json", exclude_none=True)))
            await self._write(entries)
            self._closed = True

    def abandon(self) -> None:
        """The run ends without a result (back to the queue): nothing more is published."""
        self._cancel_timer()
        self._closed = True

    async def _write(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        if self._broken:
            return
        self._sequence += 1
        args: list[Any] = [self.maxlen, self.ttl_s, self.channel, f"{self.run}.{self._sequence}"]
        for name, data in entries:
            args += [name, orjson.dumps(data)]
        try:
            await self._script(keys=[self.key], args=args)
            self.writes += 1
        except (RedisError, OSError) as exc:
            # the job goes on; readers of this stream fall back to the stored result
            self._broken = True
            log.warning("events of %s: not published (%s): readers get the result only", self.key, exc)


def decode(fields: dict[Any, Any]) -> tuple[str, dict[str, Any]]:
    """A stream entry's (event, data)."""
    name = fields.get(b"event", fields.get("event", b""))
    data = fields.get(b"data", fields.get("data", b"{}"))
    return (name.decode() if isinstance(name, bytes) else str(name)), orjson.loads(data)


def deltas_of(result: JobResult) -> dict[str, Any]:
    """One delta event carrying a whole answer: for a job whose stream is gone or never was."""
    choices = result.choices or [
        Choice(
            index=0,
            content=result.content,
            tool_calls=result.tool_calls,
            function_call=result.function_call,
            finish_reason=result.finish_reason,
        )
    ]
    out = []
    for c in choices:
        delta: dict[str, Any] = {"role": "assistant", "content": c.content}
        if c.tool_calls:
            delta["tool_calls"] = [{"index": i, **t} for i, t in enumerate(c.tool_calls)]
        if c.function_call:
            delta["function_call"] = c.function_call
        entry: dict[str, Any] = {"index": c.index, "delta": delta, "finish_reason": c.finish_reason}
        if c.logprobs is not None:
            entry["logprobs"] = c.logprobs
        out.append(entry)
    return {"model": result.model, "choices": out}
