"""Jobs over HTTP: `POST /v1/jobs` (the job contract), `GET /v1/jobs/{id}` (with `?wait=`
long-polls), and OpenAI's `POST /v1/chat/completions` (enqueue, wait, answer the completion)
and `GET /v1/models`. Validation is the contract's (worker.contract.models, through the Producer and
the batch line's parser), so the refusals name the same fields in the same words."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from worker.contract.keys import in_progress_key, job_key
from worker.contract.models import JOB_KINDS, JobBase, JobResult
from worker.contract.records import owns, tenant_job_id, validate
from worker.observe.metrics import known_models

from ..batches import LineError, completion_body, request_job, request_schema
from .deps import App, Ingress, Tenant, check_job_body, parse_json, tenant, while_connected
from .errors import ApiError, not_found
from .models import ChatCompletion, JobAccepted, JobPending, ModelList, responses

router = APIRouter(prefix="/v1", dependencies=[Depends(tenant)])


# The request bodies' schemas for /openapi.json: the job kinds' models (and what they use) go to
# components.schemas, derived from JOB_KINDS like everything else about a kind.
def schema_defs() -> dict[str, Any]:
    """Each job kind's schema under its model's name, what they use, and the chat completion request."""
    defs: dict[str, Any] = {}
    for kind, cls in JOB_KINDS.items():
        schema = cls.model_json_schema(ref_template="#/components/schemas/{model}")
        defs.update(schema.pop("$defs", {}))
        if kind != "chat":  # a body without `kind` is a chat job
            schema["required"] = [*schema.get("required", []), "kind"]
        defs[cls.__name__] = schema
    defs["ChatCompletionRequest"] = request_schema("chat", "#/components/schemas/{model}")
    defs["ChatCompletionRequest"].pop("$defs", None)  # the same as ChatJob's
    return defs


SCHEMA_DEFS = schema_defs()
JOB_SCHEMA = {
    "oneOf": [{"$ref": f"#/components/schemas/{c.__name__}"} for c in JOB_KINDS.values()],
    "discriminator": {"propertyName": "kind"},
}
CHAT_SCHEMA = {"$ref": "#/components/schemas/ChatCompletionRequest"}
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_.:@/+=-]{1,63}$")
IdempotencyKey = Annotated[
    str | None,
    Header(
        description="retries with the same key are the same job (its id: `<source>@<key>`)",
        pattern=IDEMPOTENCY_KEY.pattern,
    ),
]


CHAT_RESPONSES = responses(400, 404, 409, 429, _200=ChatCompletion, _202=JobAccepted)
CHAT_RESPONSES[200]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}  # with stream: true


def _body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def pending(app: App, job_id: str) -> str | None:
    """`running` (a worker holds it), `queued`, or None (no such job)."""
    running, queued = await app.redis.exists(in_progress_key(job_id)), await app.redis.exists(job_key(job_id))
    return "running" if running else "queued" if queued else None


def accepted(job_id: str, status: str) -> JSONResponse:
    return JSONResponse({"id": job_id, "status": status}, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


async def enqueue(app: App, source: str, job: JobBase, key: str | None) -> tuple[str, bool]:
    """(the job id, `<source>@<key>`, and whether this call created the job)."""
    await app.admit(source)
    return await app.producer(source).submit(job, key)


@router.post(
    "/jobs",
    status_code=202,
    tags=["jobs"],
    openapi_extra=_body_schema(JOB_SCHEMA),
    responses=responses(400, 409, 429, _202=JobAccepted),
)
async def create_job(request: Request, app: App, source: Tenant, idempotency_key: IdempotencyKey = None) -> Any:
    """Enqueue a job of the contract (`kind`: chat, vision or compare); 202 `{id, status}`."""
    return await submit_job(app, source, await request.body(), idempotency_key)


async def submit_job(app: Ingress, source: str, raw: bytes, idempotency_key: str | None) -> JSONResponse:
    """`POST /v1/jobs` past its auth and header checks, for the route above and for
    producers.http.fastpath, which answers the same request without the framework."""
    check_job_body(raw, app.settings.max_job_bytes)
    body = parse_json(raw)
    key = idempotency_key or body.pop("job_id", None)
    if key is not None and not isinstance(key, str):
        raise ApiError(422, "must be a string", param="job_id", code="invalid_value")
    kind = body.get("kind", "chat")
    if not isinstance(kind, str) or kind not in JOB_KINDS:
        raise ApiError(422, f"must be one of {', '.join(JOB_KINDS)}, not {kind!r}", param="kind", code="invalid_value")
    job = validate(JOB_KINDS[kind], **body)
    job_id, created = await enqueue(app, source, job, key)
    if created:
        return accepted(job_id, "queued")
    result = await app.store.get(job_id)
    return accepted(job_id, result.status if result else await pending(app, job_id) or "queued")


@router.get("/jobs/{job_id}", tags=["jobs"], response_model=None, responses=responses(404, _200=JobResult | JobPending))
async def get_job(
    request: Request,
    job_id: str,
    app: App,
    source: Tenant,
    wait: Annotated[float, Query(ge=0, description="seconds to wait for the result (at most INGRESS_WAIT_S)")] = 0,
) -> Any:
    """The result record, or `{id, status: queued|running}` while the job is pending."""
    if not owns(source, job_id):
        raise not_found(f"job {job_id}")
    result = await app.store.get(job_id)
    if result is None:
        status = await pending(app, job_id)
        if status is None:  # no such job, or it ended between the two reads
            result = await app.store.get(job_id)
            if result is None:
                raise not_found(f"job {job_id}")
        else:
            result = None
            if wait:
                result = await while_connected(request, app.waits.wait(job_id, min(wait, app.settings.ingress_wait_s)))
            if result is None:
                return {"id": job_id, "status": await pending(app, job_id) or status}
    record = result.model_dump(mode="json", exclude_none=True)
    delivery = await app.producer(source).webhook(job_id)  # a job with a callback_url: its delivery
    return {**record, "webhook": delivery.model_dump(mode="json")} if delivery else record


@router.post(
    "/chat/completions",
    tags=["openai"],
    openapi_extra=_body_schema(CHAT_SCHEMA),
    responses=CHAT_RESPONSES,
)
async def chat_completions(request: Request, app: App, source: Tenant, idempotency_key: IdempotencyKey = None) -> Any:
    """OpenAI's chat completion: enqueued as a chat job and waited for (INGRESS_WAIT_S); past
    the wait, 202 `{id, status}` with a Location to fetch it. Our options ride under `llm_router`.
    With `stream: true`, OpenAI's chunks as the worker streams them (SSE)."""
    return await answer_chat(request, app, source, idempotency_key)


async def answer_chat(request: Request, app: Ingress, source: str, idempotency_key: str | None) -> Response:
    """`POST /v1/chat/completions` past its auth and header checks, for the route above and for
    producers.http.fastpath, which answers the same request without the framework."""
    raw = await request.body()
    check_job_body(raw, app.settings.max_job_bytes)
    body = parse_json(raw)
    try:
        job = request_job("chat", body, bulk=False)
    except LineError as exc:
        raise ApiError(
            422, exc.message, param=(exc.param or "").removeprefix("body.") or None, code="invalid_value"
        ) from None
    if job.stream:
        from .events import stream_completion

        job_id, _ = await enqueue(app, source, job, idempotency_key)
        return stream_completion(app, job_id, job)
    wait_s = app.settings.ingress_wait_s
    deadline = time.monotonic() + wait_s
    job_id = tenant_job_id(source, idempotency_key)
    await app.waits.subscribed(min(wait_s, 1.0))
    with app.waits.listening(job_id) as woken:  # before the enqueue: its done message cannot be missed
        _, created = await enqueue(app, source, job, job_id)
        if created:  # a new job has no result before its done message: no look at Redis until then
            await while_connected(request, app.waits.woken(woken, wait_s))
    result = await while_connected(request, app.waits.wait(job_id, max(0.0, deadline - time.monotonic())))
    if result is None:
        return accepted(job_id, await pending(app, job_id) or "queued")
    return JSONResponse(completion(job_id, result))


def completion(job_id: str, result: JobResult) -> Any:
    """The completion the gateway gave (batches' builder), or its error in OpenAI's shape."""
    if result.status == "succeeded":
        return completion_body(job_id, result)
    error = result.error
    status = error.status if error and error.status and 400 <= error.status < 600 else 502
    message = error.message if error else "the request failed"
    raise ApiError(status, message, type=error.type if error else "server_error", code=error.code if error else None)


@router.get("/models", tags=["openai"], responses=responses(_200=ModelList))
async def models(app: App) -> dict[str, Any]:
    """The models the configuration names (METRIC_MODELS, chains, limits, prices): no gateway call."""
    names = sorted(known_models(app.settings))
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "aisa"} for n in names]}
