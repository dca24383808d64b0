"""JSON for everything arq puts in Redis (jobs, and results if ever kept): any language can read it."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

from arq.jobs import serialize_job
from pydantic import BaseModel


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


def loads(raw: bytes | str) -> Any:
    return json.loads(raw)


def job_bytes(function: str, payload: Any, enqueue_ms: int) -> bytes:
    """One job in arq's format, `function(payload)`: what producers and replays write."""
    return serialize_job(function, (payload,), {}, None, enqueue_ms, serializer=dumps)
