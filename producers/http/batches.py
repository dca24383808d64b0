"""Files and batches over HTTP, in OpenAI's shapes, on the batch engine (producers.batches):
`POST /v1/files` (multipart, `purpose=batch`; spooled to a temporary file, stored in Redis by
producers.files), `GET /v1/files` (the token's uploads), `GET|DELETE /v1/files/{id}`,
`GET /v1/files/{id}/content`; `POST /v1/batches`, `GET /v1/batches[/{id}]`,
`POST /v1/batches/{id}/cancel`.

A final batch names its output and error files (`file-<batch_id>-output`, `-errors`): they are
not stored, but read from its line results in input order (`Batches.results`) when fetched.
A token sees only its own files and batches (`llm-router:source-batches:<source>`)."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from worker.batches.record import Batch
from worker.contract.keys import batch_key, source_batches_key

from ..batches import Batches, BatchRejected, check_options
from ..files import FileObject, QuotaExceeded, UploadLapsed
from .deps import App, Ingress, Tenant, read_json, tenant
from .errors import ApiError, not_found
from .models import BatchList, FileDeleted, FileList, responses

router = APIRouter(prefix="/v1", dependencies=[Depends(tenant)])

OUTPUT_FILE = re.compile(r"^file-(batch_[0-9a-f]{32})-(output|errors)$")
# The per-source list outlives its newest batch's record by this much (purged entries are dropped when listed).
LIST_EXTRA_S = 7 * 24 * 3600
_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"enum": ["batch"]}},
                }
            }
        },
    }
}


# ---------------------------------------------------------------- files


@router.post("/files", tags=["files"], openapi_extra=_UPLOAD_SCHEMA, responses=responses(400, 403, _200=FileObject))
async def upload_file(request: Request, app: App, source: Tenant) -> dict[str, Any]:
    """Upload a JSONL file of batch requests (multipart: `file`, `purpose=batch`)."""
    async with request.form(max_files=1, max_fields=8) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch":
            raise ApiError(422, f"must be 'batch', not {purpose!r}", param="purpose", code="invalid_value")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "a multipart field `file` holding the file is required", param="file")
        try:
            found = await app.files.put(upload.read, upload.filename or "input.jsonl", "batch", source)
        except QuotaExceeded as exc:
            raise ApiError(403, str(exc), param="file", code="file_quota_exceeded") from None
        except UploadLapsed as exc:
            raise ApiError(503, str(exc), type="server_error", code="upload_lapsed", retry_after=1) from None
    return found.model_dump(exclude_none=True)


@router.get("/files", tags=["files"], responses=responses(_200=FileList))
async def list_files(
    app: App,
    source: Tenant,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    after: Annotated[str | None, Query(description="a file id: the page after it")] = None,
    order: Annotated[Literal["asc", "desc"], Query(description="by created_at")] = "desc",
    purpose: Annotated[str | None, Query(description="only files of this purpose")] = None,
) -> dict[str, Any]:
    """The token's uploaded files, newest first (OpenAI's cursor page). A batch's output and
    error files are not listed: its `output_file_id` and `error_file_id` name them."""
    files, more = await app.files.list(source, limit=limit, after=after, descending=order == "desc", purpose=purpose)
    data = [f.model_dump(exclude_none=True) for f in files]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more}


@router.get("/files/{file_id}", tags=["files"], responses=responses(404, _200=FileObject))
async def get_file(file_id: str, app: App, source: Tenant) -> dict[str, Any]:
    return (await _file(app, source, file_id)).model_dump(exclude_none=True)


@router.get(
    "/files/{file_id}/content",
    tags=["files"],
    response_class=StreamingResponse,
    responses={**responses(404), 200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}}},
)
async def file_content(file_id: str, app: App, source: Tenant) -> StreamingResponse:
    """The file's bytes; a batch's output or error file is built from its results, in input order."""
    await _file(app, source, file_id)
    output = OUTPUT_FILE.match(file_id)
    chunks = output_chunks(app.producer(source).batches, output[1], output[2]) if output else app.files.chunks(file_id)
    return StreamingResponse(chunks, media_type="application/jsonl")


@router.delete("/files/{file_id}", tags=["files"], responses=responses(404, _200=FileDeleted))
async def delete_file(file_id: str, app: App, source: Tenant) -> dict[str, Any]:
    if not await app.files.delete(file_id, source):
        raise not_found(f"file {file_id}")
    return {"id": file_id, "object": "file", "deleted": True}


async def _file(app: App, source: str, file_id: str) -> FileObject:
    output = OUTPUT_FILE.match(file_id)
    if output is None:
        found = await app.files.get(file_id, source)
        if found is None:
            raise not_found(f"file {file_id}")
        return found
    batch = await batch_of(app, source, output[1])
    view = _view(batch)
    if file_id not in (view.get("output_file_id"), view.get("error_file_id")):
        raise not_found(f"file {file_id} (yet)")
    size = 0
    async for chunk in output_chunks(app.producer(source).batches, batch.id, output[2]):
        size += len(chunk)
    created = batch.finalizing_at or batch.created_at
    return FileObject(
        id=file_id, bytes=size, created_at=created, filename=f"{batch.id}_{output[2]}.jsonl", purpose="batch_output"
    )


async def output_chunks(batches: Batches, batch_id: str, which: str) -> AsyncIterator[bytes]:
    """The output (succeeded lines) or error file (the others) as JSONL, in input order."""
    async for line in batches.results(batch_id):
        if (line["error"] is not None) == (which == "errors"):
            yield (json.dumps(line, separators=(",", ":")) + "\n").encode()


# ---------------------------------------------------------------- batches


@router.post("/batches", tags=["batches"], responses=responses(400, 404, 429, _200=Batch))
async def create_batch(request: Request, app: App, source: Tenant) -> dict[str, Any]:
    """`{input_file_id, endpoint, completion_window, metadata}` (and ours: `callback_url`, and
    `budget_usd`, the batch's budget (docs: Budgets); the OpenAI SDK sends them with `extra_body`):
    the file's lines, validated whole (a bad line refuses the batch: 400 naming it), then queued in
    the bulk lane."""
    body = await read_json(request)
    file_id, window = body.get("input_file_id"), body.get("completion_window", "24h")
    endpoint, metadata, callback_url = body.get("endpoint"), body.get("metadata"), body.get("callback_url")
    if not isinstance(file_id, str):
        message = f"input_file_id must be a string: the id of an uploaded file, not {type(file_id).__name__}"
        raise ApiError(400, message, param="input_file_id", code="invalid_input_file_id")
    try:  # every option's type before any read or write (a list for metadata is a 400, not a 500)
        check_options(
            completion_window=window,
            metadata=metadata,
            endpoint=endpoint,
            callback_url=callback_url,
            budget_usd=body.get("budget_usd"),
        )
    except BatchRejected as exc:
        raise _refused(exc) from None
    if await app.files.get(file_id, source) is None:
        raise ApiError(404, f"no file {file_id} (or not yours)", param="input_file_id", code="not_found")
    await app.admit(source)
    batches = app.producer(source).batches
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as spool:
        await app.files.download(file_id, spool)
        spool.flush()
        try:
            batch = await batches.submit(
                spool.name,
                completion_window=window,
                metadata=metadata,
                endpoint=endpoint,
                callback_url=callback_url,
                budget_usd=body.get("budget_usd"),
            )
        except BatchRejected as exc:
            raise _refused(exc) from None
    async with app.redis.pipeline(transaction=True) as tx:
        tx.hset(batch_key(batch.id), "input_file_id", file_id)
        tx.zadd(source_batches_key(source), {batch.id: batch.created_at})
        tx.expireat(source_batches_key(source), (batch.expires_at or 0) + app.settings.batch_ttl_s + LIST_EXTRA_S)
        await tx.execute()
    return _view(await batch_of(app, source, batch.id))


@router.get("/batches/{batch_id}", tags=["batches"], responses=responses(404, _200=Batch))
async def get_batch(batch_id: str, app: App, source: Tenant) -> dict[str, Any]:
    """OpenAI's Batch object, with `webhook` (its delivery) once a batch with a callback_url ended."""
    view = _view(await batch_of(app, source, batch_id))
    delivery = await app.producer(source).batches.webhook(batch_id)
    return {**view, "webhook": delivery.model_dump(mode="json")} if delivery else view


@router.post("/batches/{batch_id}/cancel", tags=["batches"], responses=responses(404, _200=Batch))
async def cancel_batch(batch_id: str, app: App, source: Tenant) -> dict[str, Any]:
    await batch_of(app, source, batch_id)
    batch = await app.producer(source).batches.cancel(batch_id)
    if batch is None:
        raise not_found(f"batch {batch_id}")
    return _view(batch)


@router.get("/batches", tags=["batches"], responses=responses(_200=BatchList))
async def list_batches(
    app: App,
    source: Tenant,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="a batch id: the page after it")] = None,
) -> dict[str, Any]:
    """The token's batches, newest first (OpenAI's cursor page)."""
    found, more = await source_batches(app, source, limit, after)
    data = [_view(b) for b in found]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more}


async def source_batches(app: Ingress, source: str, limit: int, after: str | None) -> tuple[list[Batch], bool]:
    """A page of the source's batches, newest first, after the batch id `after`; and whether more follow."""
    key, start = source_batches_key(source), 0
    if after is not None:
        rank = await app.redis.zrevrank(key, after)
        start = -1 if rank is None else rank + 1
    ids = [] if start < 0 else [i.decode() for i in await app.redis.zrevrange(key, start, start + limit)]
    found: list[Batch] = []
    for batch_id in ids[:limit]:
        batch = await app.producer(source).batches.get(batch_id)
        if batch is None:  # purged: forget it
            await app.redis.zrem(key, batch_id)
        else:
            found.append(batch)
    return found, len(ids) > limit


async def batch_of(app: App, source: str, batch_id: str) -> Batch:
    batch = None
    if await app.redis.zscore(source_batches_key(source), batch_id) is not None:
        batch = await app.producer(source).batches.get(batch_id)
    if batch is None:
        raise not_found(f"batch {batch_id}")
    return batch


def _view(batch: Batch) -> dict[str, Any]:
    """OpenAI's Batch object; a final batch names its output and error files (when it has lines for them)."""
    data = batch.model_dump(mode="json")
    if batch.final:
        counts = batch.request_counts
        data["output_file_id"] = f"file-{batch.id}-output" if counts.completed else None
        data["error_file_id"] = f"file-{batch.id}-errors" if counts.failed else None
    return data


def _refused(exc: BatchRejected) -> ApiError:
    first = exc.errors[0]
    where = f"line {first.line}: " if first.line else ""
    more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
    return ApiError(400, f"{where}{first.message}{more}", param=first.param, code=first.code)
