"""What the HTTP ingress answers, as models for `/openapi.json`: OpenAI's error shape, the
job and list shapes, and `responses(...)`, the statuses a route declares. The routes build
their bodies directly (no second validation per request); tests/e2e/test_ingress_fuzz.py checks
every answer against these schemas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from worker.batches.record import Batch

from ..files import FileObject


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error shape."""

    error: ErrorDetail


# Why each error status is answered (the Errors section of docs/ingress.md).
ERRORS: dict[int, str] = {
    400: "the body is not valid JSON (`invalid_json`) or multipart, a refused batch file (its first bad line), or a "
    "batch option of the wrong type (`param` names it)",
    401: "missing or unknown bearer token (`invalid_api_key`)",
    403: "an upload past what the token's source may keep, FILES_MAX_PER_SOURCE or FILES_MAX_BYTES_PER_SOURCE "
    "(`file_quota_exceeded`)",
    404: "no such job, file or batch, or another token's (`not_found`)",
    409: "an Idempotency-Key reused with another body (`idempotency_conflict`)",
    413: "the body is over INGRESS_MAX_BODY_BYTES, or BATCH_MAX_BYTES for an upload, or a job's body is over "
    "MAX_JOB_BYTES besides its inline images (`body_too_large`)",
    422: "a field is refused (`invalid_value`, `param` names it)",
    429: "the queue is over INGRESS_MAX_QUEUE_DEPTH (`queue_full`)",
    503: "Redis is unavailable (`unavailable`: down, loading, read-only, full), or the ingress is overloaded "
    "(`overloaded`: past INGRESS_MAX_CONNECTIONS or INGRESS_MAX_BODIES_BYTES), or an upload's lease lapsed "
    "(`upload_lapsed`, UPLOAD_LEASE_S); `Retry-After` says when to retry",
}
# Every /v1 route may answer these.
COMMON = (401, 413, 422, 503)


def responses(*statuses: int, **ok: Any) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route: `ok` maps a success status (`_200=Model`) to its model,
    `statuses` are the error statuses it may answer besides COMMON."""
    declared: dict[int | str, dict[str, Any]] = {
        int(name.removeprefix("_")): {"model": model} for name, model in ok.items()
    }
    for status in sorted({*COMMON, *statuses}):
        declared[status] = {"model": ErrorBody, "description": ERRORS[status]}
    return declared


JobStatus = Literal["queued", "running", "succeeded", "failed"]


class JobAccepted(BaseModel):
    """A job enqueued (or found under its idempotency key); fetch it at `Location`."""

    id: str
    status: JobStatus


class JobPending(BaseModel):
    id: str
    status: Literal["queued", "running"]


class ChatCompletion(BaseModel):
    """OpenAI's chat completion as the gateway gave it (`usage.cost` included)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str | None
    choices: list[dict[str, Any]]
    usage: dict[str, Any]


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool
