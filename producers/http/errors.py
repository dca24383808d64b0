"""The ingress's errors, in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`):
`ApiError`, and `error_response`, the answer to every error a route raises (ANSWERED)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException

from worker.contract.records import JobConflict, JobRejected, SourceOverQuota

log = logging.getLogger("llm_router.http")
# A request whose client left: counted with the 4xx (nginx's 499).
CLIENT_GONE = 499


class ApiError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return JSONResponse(body, status_code=self.status, headers=headers or None)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"no {what} (or not yours)", code="not_found")


class BodyTooLarge(ApiError):
    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(413, f"the body is over {setting}={limit} bytes", code="body_too_large")


class BodiesFull(ApiError):
    def __init__(self, limit: int) -> None:
        message = f"the ingress holds INGRESS_MAX_BODIES_BYTES={limit} bytes of request bodies: retry in a second"
        super().__init__(503, message, type="server_error", code="overloaded", retry_after=1)


def error_response(exc: Exception) -> Response:
    """The answer to an error the routes raise (ANSWERED), in OpenAI's shape."""
    if isinstance(exc, JobConflict):
        return ApiError(409, exc.message, param="Idempotency-Key", code="idempotency_conflict").response()
    if isinstance(exc, SourceOverQuota):  # far over its SOURCE_LIMITS quota (docs/fair-share.md)
        return ApiError(
            429, exc.message, type="rate_limit_error", code="source_quota", retry_after=exc.retry_after
        ).response()
    if isinstance(exc, JobRejected):
        return ApiError(422, exc.message, param=exc.field, code="invalid_value").response()
    if isinstance(exc, RequestValidationError):
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"][1:]) or None
        return ApiError(422, str(err["msg"]), param=param, code="invalid_value").response()
    if isinstance(exc, HTTPException):
        code = "not_found" if exc.status_code == 404 else None
        return ApiError(exc.status_code, str(exc.detail), code=code).response()
    if isinstance(exc, UNAVAILABLE):
        return ApiError(
            503, "Redis is unavailable: retry later", type="server_error", code="unavailable", retry_after=1
        ).response()
    if isinstance(exc, RedisError):  # Redis refused a command: a fault of ours, not an outage
        log.error("Redis refused a command: %s: %s", type(exc).__name__, exc)
        return ApiError(500, "internal error", type="server_error", code="internal_error").response()
    assert isinstance(exc, ApiError), exc
    return exc.response()


# Redis errors that mean it is unavailable (down, loading, a replica during a failover, full): 503.
# Any other (a command it refused) is a fault of the ingress's: 500.
UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    OutOfMemoryError,
    TryAgainError,
    ClusterDownError,
)
# What error_response answers (anything else is a 500).
ANSWERED = (ApiError, JobRejected, RequestValidationError, HTTPException, RedisError)


def _errors(app: FastAPI) -> None:
    async def handler(_: Request, exc: Exception) -> Response:
        return error_response(exc)

    for error in ANSWERED:
        app.add_exception_handler(error, handler)


def handle_errors(app: FastAPI) -> None:
    """`error_response` answers each error of ANSWERED that a route of `app` raises."""

    async def handler(_: Request, exc: Exception) -> Response:
        return error_response(exc)

    for error in ANSWERED:
        app.add_exception_handler(error, handler)
