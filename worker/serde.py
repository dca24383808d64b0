"""JSON for everything arq puts in Redis (jobs, and results if ever kept): any language can read it."""

from __future__ import annotations

import json
import time
from datetime import date, datetime
from typing import Any

from arq.jobs import serialize_job
from pydantic import BaseModel

from .models import JOB_KINDS


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
    return json.dumps(obj, default=_default, separators=(",", ":")).encode()


# What a job record that is not a readable arq job becomes: a call of `jobs.invalid` with the
# problem, so the job fails with a stored result naming it instead of vanishing inside arq.
INVALID = "invalid"


def loads(raw: bytes | str) -> Any:
    try:
        record = json.loads(raw)
    except ValueError:
        return _invalid(f"the job is not JSON: {_snippet(raw)}")
    if not isinstance(record, dict) or "f" not in record or not isinstance(record.get("a", []), list):
        return _invalid(f'the job is not an arq job record ({{"f": kind, "a": [job], ...}}): {_snippet(raw)}')
    if "s" not in record and record["f"] not in (*JOB_KINDS, INVALID):  # a job, not a result
        return _invalid(f"unknown job kind {record['f']!r}: use one of {', '.join(JOB_KINDS)}")
    record.setdefault("t", None)
    record.setdefault("k", {})
    if not isinstance(record.get("et"), int):
        record["et"] = int(time.time() * 1000)
    return record


def _invalid(problem: str) -> dict[str, Any]:
    return {"t": None, "f": INVALID, "a": [problem], "k": {}, "et": int(time.time() * 1000)}


def _snippet(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return repr(text[:80])


def job_bytes(function: str, payload: Any, enqueue_ms: int) -> bytes:
    """One job in arq's format, `function(payload)`: what producers and replays write."""
    return serialize_job(function, (payload,), {}, None, enqueue_ms, serializer=dumps)
