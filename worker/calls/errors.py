"""Every way a gateway call can fail, as one exception hierarchy.

Each class carries a short `error_class`: a bounded name used in results, logs and
metric labels, and the key of the retry/fallback policy (worker.calls.policy decides what is retried);
and `billable`: whether the gateway may have billed the call (worker.limits.budgets then keeps its
reservation spent: its worst case, not $0). Only a failure where nothing can have been billed
is not billable: a request never sent (a connect error or connect timeout: worker.calls.client says
which) or refused (a 4xx status, a 429). A read timeout, a connection dropped after the request
was sent, a stream cut or errored midway, a 5xx or an unreadable answer may have been billed.

    AIsaError
    ├── APIStatusError            the gateway answered with an error status
    │   ├── BadRequestError           400, 422   fix the request
    │   │   └── ContextLengthError        400 context_length_exceeded
    │   ├── AuthenticationError       401        stop
    │   ├── InsufficientCreditsError  402        stop spending
    │   ├── PermissionDeniedError     403        another model may be allowed
    │   ├── ModelNotFoundError        404        try another model
    │   ├── RateLimitError            429        wait retry_after, then retry
    │   └── ServerError               5xx        back off and retry
    ├── TimeoutError              no answer within the timeout
    ├── ConnectionError           could not connect, or the connection dropped
    └── MalformedResponseError    an answer we cannot read (bad JSON, stream cut or errored)
"""

from __future__ import annotations


class AIsaError(Exception):
    error_class = "error"
    billable = True  # unless it is known that nothing can have been billed

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        billable: bool | None = None,
    ) -> None:
        super().__init__(message)
        if billable is not None:
            self.billable = billable
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status else ""
        code = f" ({self.code})" if self.code else ""
        return f"{prefix}{self.error_class}{code}: {self.message}"


class APIStatusError(AIsaError):
    error_class = "status"
    billable = False  # a refusal: the gateway answered a 4xx without running the call


class BadRequestError(APIStatusError):
    error_class = "bad_request"


class ContextLengthError(BadRequestError):
    error_class = "context_length"


class AuthenticationError(APIStatusError):
    error_class = "auth"


class InsufficientCreditsError(APIStatusError):
    error_class = "credits"


class PermissionDeniedError(APIStatusError):
    error_class = "permission"


class ModelNotFoundError(APIStatusError):
    error_class = "not_found"


class RateLimitError(APIStatusError):
    error_class = "rate_limit"


class ServerError(APIStatusError):
    error_class = "server"
    billable = True  # a 5xx may come after the upstream model ran (and billed)


class TimeoutError(AIsaError):
    error_class = "timeout"


class ConnectionError(AIsaError):
    error_class = "connection"


class MalformedResponseError(AIsaError):
    error_class = "malformed"


# What each class of result error means (the docs' error table is generated from these).
ERROR_WHEN: dict[str, str] = {
    "bad_request": "the gateway refused the request as malformed",
    "context_length": "the request does not fit the model's context (`context_length_exceeded`)",
    "auth": "the gateway refused the key",
    "credits": "the account's credits are spent",
    "permission": "the key may not use this model",
    "not_found": "the gateway does not serve this model (or path)",
    "rate_limit": "too many requests; `retry_after` from `retry-after-ms` / `Retry-After` (seconds or HTTP date) "
    "/ reset headers",
    "server": "the gateway failed (5xx), or an error event inside a stream",
    "status": "any other error status",
    "timeout": "no byte within `REQUEST_TIMEOUT_S`",
    "connection": "refused or reset",
    "malformed": "a body that is not JSON, a stream cut before `[DONE]`",
    "invalid_job": "not an upstream error: the job record itself could not be read or validated",
    "internal": "not an upstream error: the worker failed on the job (a bug of ours)",
    "over_limit": "not an upstream error: the request's tokens (prompt + `max_tokens`) are over a configured TPM limit "
    "(`RATE_LIMITS`, `GLOBAL_RATE_LIMIT`)",
    "batch_cancelled": "not an upstream error: a batch line picked after its batch was cancelled",
    "batch_expired": "not an upstream error: a batch line not started within its batch's completion window",
    "budget": "not an upstream error: the call's worst case does not fit a budget (see Budgets); the error's "
    "`budget` names the scope and the amounts",
}

# The classes never sent upstream, and what happens to their job (the others: worker.calls.policy).
NOT_SENT: dict[str, str] = {
    "invalid_job": "the job fails and is dead-lettered",
    "internal": "the job fails and is dead-lettered, never lost",
    "over_limit": "never sent; the next model is tried, else the job fails",
    "batch_cancelled": "never sent; the line ends cancelled",
    "batch_expired": "never sent; the line ends expired",
    "budget": "never sent, no retry; a fallback only if cheaper; dead-lettered, replayable when the budget "
    "resets (a batch line counts as `skipped`)",
}

ERROR_CLASSES = (
    *(
        cls.error_class
        for cls in (
            BadRequestError,
            ContextLengthError,
            AuthenticationError,
            InsufficientCreditsError,
            PermissionDeniedError,
            ModelNotFoundError,
            RateLimitError,
            ServerError,
            APIStatusError,
            TimeoutError,
            ConnectionError,
            MalformedResponseError,
        )
    ),
    *NOT_SENT,
)

# The status each upstream class stands for (the docs' error table).
ERROR_STATUS: dict[str, str] = {
    "bad_request": "400, 422",
    "context_length": "400",
    "auth": "401",
    "credits": "402",
    "permission": "403",
    "not_found": "404",
    "rate_limit": "429",
    "server": "5xx",
    "status": "other 4xx",
}

_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: ModelNotFoundError,
    422: BadRequestError,
    429: RateLimitError,
}


def error_for_status(status: int, message: str, code: str | None = None, **kw: object) -> APIStatusError:
    if status == 400 and code == "context_length_exceeded":
        cls: type[APIStatusError] = ContextLengthError
    elif status >= 500:
        cls = ServerError
    else:
        cls = _BY_STATUS.get(status, APIStatusError)
    return cls(message, status=status, code=code, **kw)  # type: ignore[arg-type]
