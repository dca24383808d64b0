"""Live streams over HTTP (Server-Sent Events): `GET /v1/jobs/{id}/events` (our events, as the
worker publishes them: worker.outputs.events) and the `stream: true` form of
`POST /v1/chat/completions` (the same events as OpenAI's `chat.completion.chunk`s). Both
relay the queue: the worker streams from the gateway, the ingress reads the job's stream
(producers.streams); the ingress never calls the gateway.

SSE framing is FastAPI's own (`fastapi.sse`: `EventSourceResponse`, the `text/event-stream`
StreamingResponse, and `format_sse_event`, the spec's line encoding): no extra dependency,
and a response is an async iterator on the event loop, no thread per client. Keep-alives
(`: ping`) go out when a stream is idle for `producers.streams.RECHECK_S`, which is also how
soon a disconnected client's reader ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header
from fastapi.sse import EventSourceResponse, format_sse_event

from worker.contract.keys import events_key, job_key, result_key
from worker.contract.models import JobBase, JobResult
from worker.contract.records import owns
from worker.outputs.events import DELTA, RESET, RESULT

from ..batches import completion_body
from ..streams import Event, entry_id
from .deps import App, Tenant, tenant
from .errors import not_found
from .models import responses

router = APIRouter(prefix="/v1", dependencies=[Depends(tenant)])

KEEPALIVE = b": ping\n\n"
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Server-Sent Events", "content": {"text/event-stream": {"schema": {"type": "string"}}}}
}


@router.get("/jobs/{job_id}/events", tags=["jobs"], responses={**responses(404), **SSE_RESPONSE})
async def job_events(
    job_id: str,
    app: App,
    source: Tenant,
    last_event_id: Annotated[str | None, Header(description="resume after this event (EventSource sends it)")] = None,
) -> EventSourceResponse:
    """The job's live events (SSE): `delta` (text as the worker receives it; first the text so
    far), `reset` (discard the text: the job goes on with another attempt), then `result` (the
    result record, cost included). A finished or non-streaming job answers its whole story."""
    if not owns(source, job_id) or not await app.redis.exists(result_key(job_id), job_key(job_id), events_key(job_id)):
        raise not_found(f"job {job_id}")
    return EventSourceResponse(sse_chunks(app.streams.events(job_id, entry_id(last_event_id))), headers=SSE_HEADERS)


async def sse_chunks(events: AsyncIterator[Event | None]) -> AsyncIterator[bytes]:
    async for event in events:
        if event is None:
            yield KEEPALIVE
        else:
            yield format_sse_event(data_str=orjson.dumps(event.data).decode(), event=event.name, id=event.id)


def stream_completion(app: App, job_id: str, job: JobBase) -> EventSourceResponse:
    """`stream: true`: the job's events as OpenAI's chunks, `data: [DONE]` last."""
    usage = bool(job.stream_options and job.stream_options.include_usage)
    return EventSourceResponse(_chunks(app.streams.events(job_id), job_id, usage), headers=SSE_HEADERS)


async def _chunks(events: AsyncIterator[Event | None], job_id: str, include_usage: bool) -> AsyncIterator[bytes]:
    """OpenAI's stream: a `chat.completion.chunk` per delta event; a usage chunk (empty
    `choices`) with `stream_options.include_usage`; `[DONE]`. A failure is an `{"error"}`
    event, as an OpenAI-compatible gateway sends one mid-stream (the SDKs raise it)."""
    base = {"id": f"chatcmpl-{job_id}", "object": "chat.completion.chunk", "created": int(time.time())}
    async for event in events:
        if event is None:
            yield KEEPALIVE
        elif event.name == DELTA:
            choices = [{"logprobs": None, **c} for c in event.data.get("choices") or []]
            yield _data({**base, "model": event.data.get("model"), "choices": choices, "usage": None})
        elif event.name == RESET:
            # text already sent cannot be taken back: the client is told, the job goes on
            yield _data(_reset_error(job_id, event.data))
            return
        elif event.name == RESULT:
            result = JobResult.model_validate(event.data)
            if result.status != "succeeded":
                yield _data(_failed(result))
                return
            if include_usage:
                yield _data(
                    {**base, "model": result.model, "choices": [], "usage": completion_body(job_id, result)["usage"]}
                )
            yield DONE
            return


def _data(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _reset_error(job_id: str, data: dict[str, Any]) -> dict[str, Any]:
    error = data.get("error") or {}
    message = (
        f"{data.get('model') or 'the model'} failed mid-stream ({error.get('type')}: {error.get('message')}); "
        f"the job goes on (retry or fallback): its result will be at /v1/jobs/{job_id}"
    )
    return {"error": {"message": message, "type": "stream_reset", "param": None, "code": "stream_reset"}}


def _failed(result: JobResult) -> dict[str, Any]:
    error = result.error
    return {
        "error": {
            "message": error.message if error else "the request failed",
            "type": error.type if error else "server_error",
            "param": None,
            "code": error.code if error else None,
        }
    }
