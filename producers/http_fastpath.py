"""The fast path of the ingress's busiest route: `POST /v1/jobs` answered without FastAPI's
routing, dependency solving and exception middleware (two thirds of a request's CPU).

`JobsFastPath` is ASGI middleware inside `Guard` (so the body limit and request metrics hold).
It runs the route's own parts: the bearer scheme (`_bearer`), `tenant`, `submit_job` and
`error_response`; nothing is written twice. The FastAPI route `create_job` stays: it declares
the route in /openapi.json, and it answers whatever the fast path does not take on, an
`Idempotency-Key` header its pattern refuses (the framework's 422 naming the header).
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .http import ANSWERED, _bearer, error_response, tenant
from .http_jobs import IDEMPOTENCY_KEY, router, submit_job

PATH = "/v1/jobs"


class JobsFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # the FastAPI route, in the scope as the router puts it there (Guard's metrics label it by it)
        self.route = next(
            r for r in router.routes if isinstance(r, APIRoute) and r.path == PATH and "POST" in (r.methods or ())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY.match(key):
            await self.app(scope, receive, send)  # the route's 422, in the framework's words
            return
        scope["route"] = self.route
        try:
            source = await tenant(request, await _bearer(request))
            response: Response = await submit_job(request.app.state.ingress, source, await request.body(), key)
        except ANSWERED as exc:
            response = error_response(exc)
        await response(scope, receive, send)
