"""The HTTP ingress: `llm-router api`, an ASGI app (FastAPI) for services in any language.

It only enqueues and reads, like the Python API it is built on (`Producer`, `Batches`):
workers make every gateway call. Routes: jobs and OpenAI's chat completions and models
(producers.http.jobs), files and batches (producers.http.batches); here the app, bearer
auth, errors in OpenAI's shape, body limits, request metrics and the health probes.

Every `/v1` path needs `Authorization: Bearer <token>`; INGRESS_TOKENS maps each token to
the source name stamped on its jobs (or to a grant with a role: worker.contract.settings.TokenGrant),
and a token reads only what its source made (404 for another's). Job ids made here are
`<source>@<key>`, so two tokens' idempotency keys never meet. The operator console is mounted
under /console/ (producers.console.pages) unless CONSOLE_ENABLED=false.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import click

# callback and image URLs are read with httpx (worker.outputs.callbacks, worker.calls.egress), which
# those modules import at the first URL read: here it is loaded at start, not inside a request
import httpx  # noqa: F401
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import (
    RedisError,
)
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.contract.settings import ConfigError, Settings, exit_on_config_error, load_settings
from worker.observe.metrics import HTTP_DURATION, HTTP_REQUESTS, HTTP_WAITING

from .batches import router as batches
from .deps import Ingress
from .errors import CLIENT_GONE, BodiesFull, BodyTooLarge, handle_errors
from .events import router as events
from .fastpath import FastPath
from .jobs import SCHEMA_DEFS
from .jobs import router as jobs

# A multipart upload carries a file of up to BATCH_MAX_BYTES and a little framing.
UPLOAD_OVERHEAD = 1024 * 1024
UPLOAD_PATH = "/v1/files"
NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
# What one upload holds in memory at most (the rest is spooled to disk): a form field of
# python-multipart's max_part_size (1 MiB) and a spool's in-memory part (1 MiB).
UPLOAD_MEMORY = 2 * 1024 * 1024


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
        except ClientDisconnect:  # the client left (or its body was late: producers.http.conns): nobody to answer
            status[0] = CLIENT_GONE
        finally:
            self.holding -= held
            route = getattr(scope.get("route"), "path", None) or "other"
            HTTP_REQUESTS.labels(route, scope["method"], f"{status[0] // 100}xx").inc()
            HTTP_DURATION.labels(route, scope["method"]).observe(time.perf_counter() - started)


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

    # FastAPI's own OpenTelemetry hooks (0.16x) are off: request metrics are Guard's, on /metrics,
    # and the check whether a tracer is configured costs an environment lookup per request.
    quiet: dict[str, Any] = {"telemetry": NO_TELEMETRY} if "telemetry" in inspect.signature(FastAPI).parameters else {}
    app = FastAPI(title="llm-router", version="0.1.0", lifespan=lifespan, **quiet)
    app.add_middleware(FastPath)  # inside Guard: its body limit and request metrics hold
    app.add_middleware(Guard, settings=settings)
    handle_errors(app)
    app.include_router(jobs)
    app.include_router(batches)
    app.include_router(events)
    if settings.console_enabled:
        from ..console.pages import mount  # here: a console turned off costs no import of its modules

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
    # (each token, source name and grant is checked when the settings load: worker.contract.settings)
    from ..console.auth import check_secret

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
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="port to listen on")
def api(host: str, port: int) -> None:
    """Serve the HTTP ingress (OpenAPI schema at /openapi.json); needs INGRESS_TOKENS and REDIS_URL."""
    import uvicorn

    from worker.process.preflight import redis_problem

    from .conns import protocol_class

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
