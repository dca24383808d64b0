"""JSON for everything arq puts in Redis (jobs, and results if ever kept): any language can read it."""

from __future__ import annotations

import time
from datetime import date, datetime
from typing import Any

import orjson
from arq.jobs import serialize_job
from pydantic import BaseModel

from .models import JOB_KINDS, shown


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, BaseException):  # arq hands failed jobs' exceptions to the serializer
        return f"{type(obj).__name__}: {obj}"
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default)


# What a job record that is not a readable arq job becomes: a call of `jobs.invalid` with the
# problem, so the job fails with a stored result naming it instead of vanishing inside arq.
INVALID = "invalid"
# arq counts runs in `t`; a record may carry a few (a re-queued job), never more than this.
MAX_RECORD_TRIES = 10_000


def loads(raw: bytes | str) -> dict[str, Any]:
    """A job record, checked field by field before arq reads it: anything arq could trip on
    (a wrong type, extra arguments) becomes an `invalid` call naming the field. The job
    function gets the record's size (inline images left out) as its `size` argument."""
    raw_bytes = raw.encode() if isinstance(raw, str) else raw
    try:
        record = orjson.loads(raw_bytes)
    except ValueError:  # orjson.JSONDecodeError is one; not UTF-8 included
        return _invalid(f"the job is not JSON: {_snippet(raw_bytes)}", raw_bytes)
    if not isinstance(record, dict):
        return _invalid(f'the job is not an arq job record ({{"f": kind, "a": [job], ...}}): {_snippet(raw_bytes)}')
    problem = _record_problem(record)
    if problem:
        return _invalid(problem, raw_bytes)
    et = record.get("et")
    return {
        "f": record["f"],
        "a": record["a"],
        "k": {"size": len(raw_bytes)},
        "t": record.get("t"),
        "et": int(time.time() * 1000) if et is None else et,
    }


def _record_problem(record: dict[str, Any]) -> str | None:
    get = record.get
    f, a, k, t, et = get("f"), get("a"), get("k"), get("t"), get("et")
    if "f" not in record:
        return 'the job is not an arq job record ({"f": kind, "a": [job], ...}): it has no `f`'
    if not isinstance(f, str) or f not in JOB_KINDS:
        return f"unknown job kind {shown(f)}: use one of {', '.join(JOB_KINDS)}"
    if not isinstance(a, list) or len(a) != 1 or not isinstance(a[0], dict):
        return "`a` must be a list holding exactly one job object: [{...}]"
    if k not in (None, {}):
        return "`k` must be empty or left out (a job takes no keyword arguments)"
    if t is not None and (type(t) is not int or not 0 <= t <= MAX_RECORD_TRIES):
        return f"`t` must be left out, null or an integer 0-{MAX_RECORD_TRIES}, not {shown(t)}"
    if et is not None and (type(et) is not int or et < 0):
        return f"`et` must be left out or the enqueue time in ms (an integer), not {shown(et)}"
    return None


def _invalid(problem: str, raw: bytes = b"") -> dict[str, Any]:
    record = raw[:RECORD_KEPT_BYTES].decode("utf-8", "replace")
    return {"t": None, "f": INVALID, "a": [problem, record], "k": {}, "et": int(time.time() * 1000)}


# How much of an unreadable record its dead letter keeps.
RECORD_KEPT_BYTES = 4096


def _snippet(raw: bytes) -> str:
    return shown(raw[:80].decode("utf-8", "replace"), 100)


def job_bytes(function: str, payload: Any, enqueue_ms: int) -> bytes:
    """One job in arq's format, `function(payload)`: what producers and replays write."""
    return serialize_job(function, (payload,), {}, None, enqueue_ms, serializer=dumps)


def as_text(value: bytes | str) -> str:
    """What Redis answered, as text."""
    return value.decode() if isinstance(value, bytes) else value
