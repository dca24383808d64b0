"""The fast path of the ingress's busiest routes: `POST /v1/jobs` and `POST /v1/chat/completions`
answered without FastAPI's routing, dependency solving and exception middleware (two thirds of
a request's CPU).

`FastPath` is ASGI middleware inside `Guard` (so the body limit and request metrics hold).
It runs the routes' own parts: the bearer scheme (`bearer`), `tenant`, `submit_job` or
`answer_chat`, and `error_response`; nothing is written twice. The FastAPI routes stay: they
declare the routes in /openapi.json, and they answer whatever the fast path does not take on,
an `Idempotency-Key` header its pattern refuses (the framework's 422 naming the header).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .deps import Ingress, bearer, tenant
from .errors import ANSWERED, error_response
from .jobs import IDEMPOTENCY_KEY, answer_chat, router, submit_job

PATH = "/v1/jobs"
CHAT_PATH = "/v1/chat/completions"
Answer = Callable[[Request, Ingress, str, "str | None"], Awaitable[Response]]


async def _submit(request: Request, app: Ingress, source: str, key: str | None) -> Response:
    return await submit_job(app, source, await request.body(), key)


ANSWERS: dict[str, Answer] = {PATH: _submit, CHAT_PATH: answer_chat}


class FastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # the FastAPI routes, in the scope as the router puts them there (Guard's metrics label them by it)
        self.routes = {
            r.path: r
            for r in router.routes
            if isinstance(r, APIRoute) and r.path in ANSWERS and "POST" in (r.methods or ())
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in ANSWERS:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY.match(key):
            await self.app(scope, receive, send)  # the route's 422, in the framework's words
            return
        path = scope["path"]
        scope["route"] = self.routes[path]
        try:
            source = await tenant(request, await bearer(request))
            response = await ANSWERS[path](request, request.app.state.ingress, source, key)
        except ANSWERED as exc:
            response = error_response(exc)
        await response(scope, receive, send)


JobsFastPath = FastPath  # its name when it took only POST /v1/jobs
