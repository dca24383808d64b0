"""Reading a job's live events (worker.outputs.events) for many HTTP clients in one process.

A reader reads the job's stream from its start (or from a `Last-Event-ID`) with plain
`XREAD` (no BLOCK), then waits for a wake-up: one pattern subscription of the process (a
`ResultWaits` on the `events-posted` and `done` channels) wakes the readers of the job a
message names. A blocked `XREAD` per client would hold a Redis connection per client; here a
client costs a future, and reads borrow a pooled connection for one round trip. A missed
message costs at most RECHECK_S, when each idle reader looks again (and its client gets a
keep-alive).

Each read's entries are compacted before they are sent: the deltas merged into one event
(so a client that connects late gets the text so far as one event), deltas followed by a
`reset` in the same read dropped (with the reset, unless the client holds no text), and the
stream ends at the `result` event. A job whose stream is gone, or never was (not streamed,
STREAM_EVENTS_TTL_S past, 0, or publishing failed), is told from its stored result: its whole
answer as one delta, then the result.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from worker.contract.keys import DONE_PREFIX, EVENTS_POSTED_PREFIX, events_key, job_key
from worker.contract.models import JobResult
from worker.contract.store import ResultStore
from worker.outputs.events import DELTA, RESET, RESULT, Deltas, decode, deltas_of

from .waits import ResultWaits

RECHECK_S = 5.0
READ_COUNT = 1000
ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


@dataclass
class Event:
    """One event for a client: `delta`, `reset` or `result`; `id` is the stream entry's (None
    for events told from the stored result)."""

    name: str
    data: dict[str, Any]
    id: str | None = None


def compact(entries: list[tuple[Any, dict[Any, Any]]], holding: bool) -> tuple[list[Event], bool]:
    """One read's entries as the events to send, given whether the client holds text (deltas
    since its last reset); returns them and whether it holds text after them."""
    out: list[Event] = []
    deltas, model, last_id = Deltas(), None, None
    for raw_id, fields in entries:
        entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        name, data = decode(fields)
        if name == DELTA:
            deltas.add(data.get("choices") or [])
            model, last_id = data.get("model"), entry_id
        elif name == RESET:
            deltas.clear()  # never sent: nothing to discard
            if holding:
                out.append(Event(RESET, data, entry_id))
                holding = False
        elif name == RESULT:
            if deltas:
                out.append(Event(DELTA, deltas.take(model), last_id))
            out.append(Event(RESULT, data, entry_id))
            return out, holding
    if deltas:
        out.append(Event(DELTA, deltas.take(model), last_id))
        holding = True
    return out, holding


class JobStreams:
    """The readers of one ingress process: `events(job_id)`."""

    def __init__(self, redis: Redis, pubsub: Redis, store: ResultStore) -> None:
        self.redis = redis
        self.store = store
        self.wakeups = ResultWaits(pubsub, store, prefixes=(EVENTS_POSTED_PREFIX, DONE_PREFIX))

    async def events(self, job_id: str, after: str | None = None) -> AsyncIterator[Event | None]:
        """The job's events from its start (or after the entry `after`), ending with `result`;
        None when nothing came for RECHECK_S (time for a keep-alive)."""
        key, last = events_key(job_id), after or "0-0"
        holding = after is not None  # a client resuming holds the text it was sent
        stored = None
        await self.wakeups.subscribed(1.0)
        while True:
            with self.wakeups.listening(job_id) as woken:  # listen before looking: nothing is missed
                read = await self.redis.xread({key: last}, count=READ_COUNT)
                if read:
                    entries = read[0][1]
                    last = entries[-1][0]
                    sent, holding = compact(entries, holding)
                    for event in sent:
                        yield event
                        if event.name == RESULT:
                            return
                    continue
                if stored is not None:  # stored, and the stream (read once more) has no result event
                    for event in told(stored, holding):
                        yield event
                    return
                stored = await self.store.get(job_id)
                if stored is not None:
                    continue  # the result event precedes the stored result: read once more
                try:
                    await asyncio.wait_for(woken, RECHECK_S)
                except TimeoutError:
                    if not await self.redis.exists(job_key(job_id), key):
                        return  # no job, no result, no stream: it is gone
                    yield None

    async def aclose(self) -> None:
        await self.wakeups.aclose()


def told(result: JobResult, holding: bool) -> list[Event]:
    """A finished job's story from its stored result: its whole answer, then the result."""
    events = []
    if holding:
        message = "the stream ended without its result: the answer follows whole"
        events.append(Event(RESET, {"model": None, "error": {"type": "replay", "message": message}}))
    if result.status == "succeeded" and result.answers is None:
        events.append(Event(DELTA, deltas_of(result)))
    events.append(Event(RESULT, result.model_dump(mode="json", exclude_none=True)))
    return events


def entry_id(value: str | None) -> str | None:
    """A `Last-Event-ID` that names a stream entry, else None (read from the start)."""
    return value if value and ENTRY_ID.match(value) else None
