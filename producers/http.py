"""The HTTP ingress: `llm-router api`, an ASGI app (FastAPI) for services in any language.

It only enqueues and reads, like the Python API it is built on (`Producer`, `Batches`):
workers make every gateway call. Routes: jobs and OpenAI's chat completions and models
(producers.http_jobs), files and batches (producers.http_batches); here the app, bearer
auth, errors in OpenAI's shape, body limits, request metrics and the health probes.

Every `/v1` path needs `Authorization: Bearer <token>`; INGRESS_TOKENS maps each token to
the source name stamped on its jobs (or to a grant with a role: worker.settings.TokenGrant),
and a token reads only what its source made (404 for another's). Job ids made here are
`<source>@<key>`, so two tokens' idempotency keys never meet. The operator console is mounted
under /console/ (producers.console) unless CONSOLE_ENABLED=false.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import ipaddress
import logging
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Annotated, Any, TypeVar

import click
import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
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
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.connections import async_pool_redis, async_redis
from worker.metrics import HTTP_DURATION, HTTP_REQUESTS, HTTP_WAITING
from worker.settings import ConfigError, Settings, TokenGrant, exit_on_config_error, load_settings
from worker.store import ResultStore

from .api import JobConflict, JobRejected, Producer, SourceOverQuota
from .coalesce import ScriptBatches
from .files import Files
from .streams import JobStreams
from .waits import ResultWaits

# A multipart upload carries a file of up to BATCH_MAX_BYTES and a little framing.
UPLOAD_OVERHEAD = 1024 * 1024
UPLOAD_PATH = "/v1/files"
NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
# The queue's depth (for INGRESS_MAX_QUEUE_DEPTH) is read again after this long, or sooner when the
# jobs admitted since the last read could reach the limit: far under it, no read per request.
DEPTH_FRESH_S = 1.0
T = TypeVar("T")
log = logging.getLogger("llm_router.http")
# Redis connections one ingress process opens for commands (requests wait for a free one);
# every long-poll shares one more, the pub/sub of producers.waits.
REDIS_CONNECTIONS = 64


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


class Ingress:
    """What the app's requests share: Redis, the result waits, the files, a Producer per source."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = async_pool_redis(
            settings.redis_url, max_connections=REDIS_CONNECTIONS, timeout=10, socket_connect_timeout=2
        )
        self.store = ResultStore(self.redis, settings.result_ttl_s)
        self.waits = ResultWaits(async_redis(settings.redis_url, socket_connect_timeout=2), self.store)
        self.files = Files(
            self.redis,
            settings.file_ttl_s,
            settings.files_max_per_source,
            settings.files_max_bytes_per_source,
            settings.upload_lease_s,
        )
        self.streams = JobStreams(self.redis, async_redis(settings.redis_url, socket_connect_timeout=2), self.store)
        self._producers: dict[str, Producer] = {}
        self.grants = settings.grants()
        self.script_batches = ScriptBatches(self.redis)
        self._depth, self._depth_at = 0, float("-inf")  # the last depth read, plus the jobs admitted since

    def producer(self, source: str) -> Producer:
        """The producer of a token's source: its jobs stamped with it, their ids in its namespace."""
        if source not in self._producers:
            self._producers[source] = Producer(
                source=source,
                tenant=True,
                settings=self.settings,
                redis=self.redis,
                store=self.store,
                call=self.script_batches.call,
            )
        return self._producers[source]

    def grant_of(self, token: str) -> TokenGrant | None:
        """The token's grant (source, role), compared in constant time against every known token."""
        found = None
        for known, grant in self.grants.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = grant
        return found

    def source_of(self, token: str) -> str | None:
        """The token's source name (None: unknown, or an operator token without one)."""
        grant = self.grant_of(token)
        return None if grant is None else grant.source

    async def admit(self, source: str, jobs: int = 1) -> None:
        """429 when the queue is over INGRESS_MAX_QUEUE_DEPTH. The depth is read when the last
        read is over DEPTH_FRESH_S old or the jobs admitted since could reach the limit."""
        limit = self.settings.ingress_max_queue_depth
        if not limit:
            return
        now = time.monotonic()
        if now - self._depth_at > DEPTH_FRESH_S or self._depth + jobs > limit:
            self._depth, self._depth_at = await self.producer(source).queued(), now
        if self._depth + jobs > limit:
            raise ApiError(
                429,
                f"the queue holds over INGRESS_MAX_QUEUE_DEPTH={limit} jobs: retry later",
                type="rate_limit_error",
                code="queue_full",
            )
        self._depth += jobs

    async def aclose(self) -> None:
        await self.waits.aclose()
        await self.waits.redis.aclose()
        await self.streams.aclose()
        await self.streams.wakeups.redis.aclose()
        await self.redis.aclose()


async def ingress(request: Request) -> Ingress:
    """(Dependencies are `async def`: a plain `def` one costs a thread hop per request.)"""
    found: Ingress = request.app.state.ingress
    return found


_bearer = HTTPBearer(auto_error=False, description="a token of INGRESS_TOKENS")


async def tenant(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """The source name of the request's bearer token; 401 without a known one (an operator
    token without a source is the console's only)."""
    source = request.app.state.ingress.source_of(credentials.credentials) if credentials else None
    if source is None:
        raise ApiError(
            401, "missing or unknown bearer token: send Authorization: Bearer <token>", code="invalid_api_key"
        )
    return source


Tenant = Annotated[str, Depends(tenant)]
App = Annotated[Ingress, Depends(ingress)]


async def while_connected(request: Request, waiting: Coroutine[Any, Any, T]) -> T:
    """What `waiting` returns, unless the client leaves first: then it is cancelled and
    ClientDisconnect raised (Guard ends the request quietly). A long-poll whose client has gone
    ends now, not when its wait would have."""
    task = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(_gone(request.receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        task.cancel()  # (done: no-op)
    if task.done() and not task.cancelled():
        return task.result()
    if gone.done() and not gone.cancelled() and (error := gone.exception()):
        raise error
    raise ClientDisconnect()


async def _gone(receive: Receive) -> None:
    """Returns when the client has gone (a request's body, if any, already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object (read through the body limit), or a 400."""
    return parse_json(await request.body())


# A JSON string that starts as a data URL (an inline image, or text that looks like one).
_DATA_URL = re.compile(rb'"data:[^"]*"')
# The most bytes a JSON body spends on spelling a job that its record does not: per backslash (an
# escape: `\u00e9` is 6 bytes for 2), per `null` (a field left out: `"presence_penalty":null`).
_ESCAPE_SLACK, _NULL_SLACK = 5, 40


def job_body_floor(raw: bytes) -> int:
    """The fewest bytes the job record of this JSON body can have, its inline images left out
    (MAX_JOB_BYTES's measure): the body without its data URLs, whitespace, escapes and nulls.
    A few passes in C over the bytes, before any parse: an over-long body costs no parse."""
    images = sum(len(m) for m in _DATA_URL.findall(raw))
    spelling = sum(raw.count(c) for c in (b" ", b"\n", b"\r", b"\t"))
    spelling += _ESCAPE_SLACK * raw.count(b"\\") + _NULL_SLACK * raw.count(b"null")
    return len(raw) - images - spelling


def check_job_body(raw: bytes, max_job_bytes: int) -> None:
    """413 when the body cannot be a job of MAX_JOB_BYTES (measured before it is parsed)."""
    floor = job_body_floor(raw)
    if floor > max_job_bytes:
        message = (
            f"the body holds at least {floor} bytes besides its inline images, over MAX_JOB_BYTES={max_job_bytes}: "
            "shorten the messages and tools, or split the job"
        )
        raise ApiError(413, message, code="body_too_large")


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body's JSON object, or a 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # (its reason: where, or that it nests over orjson's 1024 levels)
        raise ApiError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


class BodyTooLarge(ApiError):
    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(413, f"the body is over {setting}={limit} bytes", code="body_too_large")


class BodiesFull(ApiError):
    def __init__(self, limit: int) -> None:
        message = f"the ingress holds INGRESS_MAX_BODIES_BYTES={limit} bytes of request bodies: retry in a second"
        super().__init__(503, message, type="server_error", code="overloaded", retry_after=1)


# What one upload holds in memory at most (the rest is spooled to disk): a form field of
# python-multipart's max_part_size (1 MiB) and a spool's in-memory part (1 MiB).
UPLOAD_MEMORY = 2 * 1024 * 1024
# A request whose client left: counted with the 4xx (nginx's 499).
CLIENT_GONE = 499


class Guard:
    """ASGI middleware: refuses a body over its limit as it streams in (never read whole
    first), bounds the bytes of request bodies all requests hold (INGRESS_MAX_BODIES_BYTES:
    counted as they are read, so only once a route has authenticated the request), ends a
    request whose client left without an error, and counts every request by route template,
    method and status class."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.holding = 0  # bytes of request bodies read by requests in progress

    def limit(self, scope: Scope) -> tuple[int, str]:
        if scope["path"] == UPLOAD_PATH:
            return self.settings.batch_max_bytes + UPLOAD_OVERHEAD, "BATCH_MAX_BYTES"
        return self.settings.ingress_max_body_bytes, "INGRESS_MAX_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]
        limit, setting = self.limit(scope)
        received = held = 0
        memory = UPLOAD_MEMORY if scope["path"] == UPLOAD_PATH else limit

        async def limited() -> Message:
            nonlocal received, held
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit, setting)
            more = min(received, memory) - held
            if more:
                held += more
                self.holding += more
                if self.holding > self.settings.ingress_max_bodies_bytes:
                    raise BodiesFull(self.settings.ingress_max_bodies_bytes)
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            declared = dict(scope["headers"]).get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > limit:
                await BodyTooLarge(limit, setting).response()(scope, receive, sending)
            else:
                await self.app(scope, limited, sending)
        except ClientDisconnect:  # the client left (or its body was late: producers.http_conns): nobody to answer
            status[0] = CLIENT_GONE
        finally:
            self.holding -= held
            route = getattr(scope.get("route"), "path", None) or "other"
            HTTP_REQUESTS.labels(route, scope["method"], f"{status[0] // 100}xx").inc()
            HTTP_DURATION.labels(route, scope["method"]).observe(time.perf_counter() - started)


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


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ingress app; `settings` default to the environment's."""
    settings = settings or load_settings()
    check_tokens(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ingress = found = Ingress(settings)
        HTTP_WAITING.set_function(lambda: found.waits.waiting + found.streams.wakeups.waiting)
        try:
            yield
        finally:
            await app.state.ingress.aclose()

    from .http_batches import router as batches
    from .http_events import router as events
    from .http_jobs import router as jobs

    # FastAPI's own OpenTelemetry hooks (0.16x) are off: request metrics are Guard's, on /metrics,
    # and the check whether a tracer is configured costs an environment lookup per request.
    quiet: dict[str, Any] = {"telemetry": NO_TELEMETRY} if "telemetry" in inspect.signature(FastAPI).parameters else {}
    app = FastAPI(title="llm-router", version="0.1.0", lifespan=lifespan, **quiet)
    from .http_fastpath import FastPath

    app.add_middleware(FastPath)  # inside Guard: its body limit and request metrics hold
    app.add_middleware(Guard, settings=settings)
    _errors(app)
    app.include_router(jobs)
    app.include_router(batches)
    app.include_router(events)
    if settings.console_enabled:
        from .console import mount

        # without CONSOLE_SECRET (`llm-router api` allows it on loopback only): this process's own
        # key, so sessions last as long as the process
        secret = settings.console_secret.get_secret_value() if settings.console_secret else secrets.token_urlsafe(32)
        mount(app, settings, secret)
    _openapi(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, bool]:
        """The process is up."""
        return {"ok": True}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> Response:
        """Redis answers (503 while it does not)."""
        try:
            ready = bool(await asyncio.wait_for(request.app.state.ingress.redis.ping(), 2))
        except (RedisError, OSError, TimeoutError):
            ready = False
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _openapi(app: FastAPI) -> None:
    """/openapi.json with the job contract's models among its components."""
    from fastapi.openapi.utils import get_openapi

    from .http_jobs import SCHEMA_DEFS

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMA_DEFS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = build  # type: ignore[method-assign]


def check_tokens(settings: Settings) -> None:
    if settings.ingress_max_bodies_bytes < settings.ingress_max_body_bytes:
        raise ConfigError(
            f"INGRESS_MAX_BODIES_BYTES={settings.ingress_max_bodies_bytes} is under INGRESS_MAX_BODY_BYTES="
            f"{settings.ingress_max_body_bytes}: a body of the largest size would always be refused; raise it"
        )
    if not settings.ingress_tokens:
        raise ConfigError('INGRESS_TOKENS is not set: export INGRESS_TOKENS=\'{"<token>": "<source name>"}\'')
    # (each token, source name and grant is checked when the settings load: worker.settings)
    from .console_auth import check_secret

    check_secret(settings)


def _can_listen(host: str, port: int) -> None:
    """A ConfigError naming --host/--port if uvicorn could not bind them (it would log an errno
    and exit 3): a busy port, an address not on this machine, a name that does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on --host {host} --port {port} ({exc.strerror or exc}): give a free port and an "
            "address of this machine (127.0.0.1, 0.0.0.0 for all)"
        ) from None


def check_console_secret(settings: Settings, host: str) -> None:
    """The console signs sessions with CONSOLE_SECRET, the same on every ingress process: needed
    unless the console is off or the ingress listens on loopback only (one process: the demo)."""
    if not settings.console_enabled or settings.console_secret is not None or _loopback(host):
        return
    raise ConfigError(
        "CONSOLE_SECRET is not set: the operator console (/console/) signs its sessions with it. Set it to a "
        "long random value, the same on every ingress process (python -c 'import secrets; "
        "print(secrets.token_urlsafe(32))'), or turn the console off with CONSOLE_ENABLED=false"
    )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@click.group()
def cli() -> None:
    """The HTTP ingress."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: all)")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def api(host: str, port: int) -> None:
    """Serve the HTTP ingress (OpenAPI schema at /openapi.json); needs INGRESS_TOKENS and REDIS_URL."""
    import uvicorn

    from worker.preflight import redis_problem

    from .http_conns import protocol_class

    try:
        settings = load_settings()
        check_console_secret(settings, host)
        app = create_app(settings)
        protocol = protocol_class(settings)  # deadlines and a bound on connections
        problem = redis_problem(settings.redis_url)
        if problem is not None and problem.lasting:
            raise ConfigError(f"REDIS_URL: {problem.text}")
        _can_listen(host, port)
    except ConfigError as exc:
        exit_on_config_error(exc)
        return
    if problem is not None:  # Redis may be starting: /readyz and requests answer 503 until it answers
        click.echo(f"llm-router api: {problem.text}; serving, with 503s until it answers", err=True)
    # no access log and no X-Forwarded-* rewriting: both cost per request and nothing here reads them
    uvicorn.run(
        app,
        host=host,
        port=port,
        http=protocol,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
