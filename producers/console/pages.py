"""The operator console: server-rendered pages under `/console/` of `llm-router api` (same
process, same port; CONSOLE_ENABLED=false leaves it out).

Pages are Jinja2 templates (producers/console/assets/templates) with one small script and one
stylesheet of our own (assets/static), shipped in the package: no CDN, no Node build,
nothing fetched at install or run time. The script only turns UTC times into the viewer's
zone, follows a running job's live text (the job's SSE events, as `GET /v1/jobs/{id}/events`
sends them) and moves a batch's progress bar; every page works without it.

Sign-in, sessions and CSRF: producers.console.auth. A source token sees only its source's jobs,
batches and spend (the tenancy of the HTTP API); an operator token sees every source's and may
act on dead letters, quarantine and schedules. Every action goes through the code the CLI verb
runs (`dlq replay`, `dlq purge`, `quarantine purge`, `batch cancel`, `schedule run`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from worker.contract.keys import SPEND_BY, events_key, job_key, result_key
from worker.contract.records import owns
from worker.outputs.dlq import DeadLetters
from worker.process.quarantine import Quarantine

from ..api import Producer
from ..http.batches import batch_of, output_chunks, source_batches
from ..http.deps import Ingress
from ..http.errors import ApiError
from ..http.events import SSE_HEADERS, sse_chunks
from ..http.jobs import pending
from ..streams import entry_id
from .auth import BadCsrf, Forbidden, Sessions, SignIn, Viewer, check_csrf

if TYPE_CHECKING:
    from fastapi.templating import Jinja2Templates

    from worker.contract.settings import Settings
    from worker.observe.exporter import QueueCollector

# What only the console's pages use (the exporter, the gate, schedules, spend, and through them
# the gateway client) is imported when a page first needs it: a console never opened adds
# nothing to the ingress process.

ASSETS = Path(__file__).parent / "assets"
# No inline script or style anywhere: the one script and stylesheet are files of ours.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@functools.cache
def templates() -> Jinja2Templates:
    """The pages' templates, loaded on the first page asked for (Jinja2 is imported then: an
    ingress whose console is never opened does not load it)."""
    from fastapi.templating import Jinja2Templates

    found = Jinja2Templates(directory=str(ASSETS / "templates"))
    found.env.filters["utc"] = _utc
    return found


class ConsoleRoute(APIRoute):
    """A console route: its answers carry the security headers; no session sends the browser to
    sign in, a page beyond the viewer's role is a 403 page, a form without its CSRF token a 403."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignIn:
                response = RedirectResponse(f"/console/login?next={quote(request.url.path)}", status_code=303)
            except Forbidden as exc:
                response = _error(request, 403, f"{exc.what} needs an operator token")
            except BadCsrf:
                response = _error(request, 403, "the form's CSRF token is missing or wrong: reload the page and retry")
            except ApiError as exc:
                response = _error(request, exc.status, exc.message)
            except RequestValidationError as exc:  # a bad query or form value: the page says which
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"][1:]) or "the request"
                response = _error(request, 400, f"{where}: {err['msg']}")
            response.headers.update(SECURITY_HEADERS)
            return response

        return route


router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


def _error(request: Request, status: int, message: str) -> Response:
    return templates().TemplateResponse(request, "error.html", {"message": message, "viewer": None}, status_code=status)


def console(request: Request) -> Console:
    found: Console = request.app.state.console
    return found


class Console:
    """What the console's requests share: the ingress, the sessions, the exporter's collector."""

    def __init__(self, app: FastAPI, settings: Settings, secret: str) -> None:
        self.app = app
        self.settings = settings
        self.sessions = Sessions(settings, secret)
        self._collector: QueueCollector | None = None
        self._producer: Producer | None = None

    @property
    def ingress(self) -> Ingress:
        found: Ingress = self.app.state.ingress
        return found

    @property
    def producer(self) -> Producer:
        """A Producer with no source, as the CLI verbs use (`batch`, `schedule run`): a batch it
        submits stamps no source on its lines; on the ingress's Redis and settings."""
        if self._producer is None:
            self._producer = Producer(settings=self.settings, redis=self.ingress.redis, store=self.ingress.store)
        return self._producer

    @property
    def collector(self) -> QueueCollector:
        if self._collector is None:  # made on first use: a console never opened costs nothing
            from worker.observe.exporter import QueueCollector

            self._collector = QueueCollector(self.settings)
        return self._collector


Con = Annotated[Console, Depends(console)]


async def viewer(request: Request) -> Viewer:
    return console(request).sessions.viewer(request)


Who = Annotated[Viewer, Depends(viewer)]


def page(name: str) -> Callable[..., Any]:
    """Render template `name` with the route's dict, the viewer and the page's name."""

    def wrap(fn: Callable[..., Awaitable[dict[str, Any]]]) -> Callable[..., Awaitable[Response]]:
        @functools.wraps(fn)
        async def render(*args: Any, **kwargs: Any) -> Response:
            context = await fn(*args, **kwargs)
            request: Request = kwargs["request"]
            return templates().TemplateResponse(request, name, {"page": name.removesuffix(".html"), **context})

        return render

    return wrap


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# ---------------------------------------------------------------- sign-in


@router.get("/login")
async def login_form(request: Request, con: Con, next: str = "/console/") -> Response:
    csrf = con.sessions.pre_csrf(request)
    response = templates().TemplateResponse(request, "login.html", {"viewer": None, "next": _local(next), "csrf": csrf})
    con.sessions.keep_pre_csrf(response, csrf)
    return response


@router.post("/login")
async def login(
    request: Request,
    con: Con,
    token: Annotated[str, Form(max_length=4096)],
    csrf: Annotated[str, Form(max_length=256)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/console/",
) -> Response:
    con.sessions.check_pre_csrf(request, csrf)
    response = _see_other(_local(next))
    if not con.sessions.sign_in(token.strip(), response):
        failed = templates().TemplateResponse(
            request,
            "login.html",
            {"viewer": None, "next": _local(next), "csrf": csrf, "error": "unknown token"},
            status_code=401,
        )
        return failed
    return response


@router.post("/logout")
async def logout(request: Request, con: Con, who: Who, csrf: Annotated[str, Form(max_length=256)] = "") -> Response:
    check_csrf(who.csrf, csrf)
    response = _see_other("/console/login")
    con.sessions.sign_out(response)
    return response


def _local(url: str) -> str:
    """Only a path of the console itself is followed after sign-in (no open redirect)."""
    return url if url.startswith("/console/") and not url.startswith("//") else "/console/"


# ---------------------------------------------------------------- overview


@router.get("/")
@page("overview.html")
async def overview_page(request: Request, con: Con, who: Who) -> dict[str, Any]:
    from . import views as views

    return {"viewer": who, **await views.overview(con.ingress, con.collector, who.operator, who.source)}


@router.post("/gate/open")
@page("done.html")
async def gate_open(
    request: Request, con: Con, who: Who, csrf: Annotated[str, Form(max_length=256)] = ""
) -> dict[str, Any]:
    """Resume a paused queue now (workers otherwise probe the gateway every PROBE_INTERVAL_S and
    resume by themselves): for an operator who fixed the key or added credits."""
    from worker.limits.gate import Gate

    check_csrf(who.csrf, csrf)
    who.must_operate("resuming the queue")
    opened = await Gate(con.ingress.redis, con.settings.probe_interval_s).open()
    said = "the queue is resumed: workers pick jobs again" if opened else "the queue was not paused"
    return {"viewer": who, "message": said, "back": "/console/"}


# ---------------------------------------------------------------- jobs


@router.get("/jobs")
@page("jobs.html")
async def jobs_page(
    request: Request,
    con: Con,
    who: Who,
    id: str = "",
    source: Annotated[str, Query(pattern=r"^[A-Za-z0-9_.:-]{0,64}$")] = "",
    before: Annotated[str | None, Query(pattern=r"^[0-9]{1,19}(-[0-9]{1,20})?$")] = None,
    queued: Annotated[int, Query(ge=0, le=1000)] = 0,
) -> dict[str, Any]:
    """Look a job up by id (a source token: its own ids, `<source>@...`); without one, the jobs
    in the queue (page `queued`) and those that ended lately, newest first (the page before the
    entry `before`) (a source token: its own; an operator: every source's, or `source`'s)."""
    job_id = id.strip()
    if not job_id:
        from . import views as views

        shown = who.source if who.source is not None else (source or None)
        waiting = await views.queued_jobs(con.ingress, shown, queued)
        recent = await views.recent_jobs(con.ingress, shown, before)
        return {
            "viewer": who,
            "job": None,
            "asked": "",
            "queued": waiting,
            "scanned": views.QUEUE_SCANNED,
            "recent": recent,
            "source": shown or "",
            "before": before,
        }
    app = con.ingress
    found = await _job(app, who, job_id)
    return {"viewer": who, "asked": job_id, **found}


async def _job(app: Ingress, who: Viewer, job_id: str) -> dict[str, Any]:
    if who.source is not None and not owns(who.source, job_id):
        raise ApiError(404, f"no job {job_id} (or not yours)")
    result = await app.store.get(job_id)
    status = None if result is not None else await pending(app, job_id)
    if result is None and status is None:
        raise ApiError(404, f"no job {job_id} (or not yours)")
    # a pending job's page follows its events (the text as it comes, then the result); a finished
    # one shows its stored answer only
    return {"job": result, "job_id": job_id, "status": result.status if result else status}


@router.get("/jobs/events")
async def job_events(request: Request, con: Con, who: Who, id: str) -> Response:
    """The job's live events for the Jobs page (the cookie's session, not a bearer token)."""
    app = con.ingress
    if (who.source is not None and not owns(who.source, id)) or not await app.redis.exists(
        result_key(id), job_key(id), events_key(id)
    ):
        raise ApiError(404, f"no job {id} (or not yours)")
    last = request.headers.get("last-event-id")
    return StreamingResponse(
        sse_chunks(app.streams.events(id, entry_id(last))), media_type="text/event-stream", headers=SSE_HEADERS
    )


# ---------------------------------------------------------------- batches


@router.get("/batches")
@page("batches.html")
async def batches_page(
    request: Request, con: Con, who: Who, after: Annotated[str | None, Query(max_length=128)] = None
) -> dict[str, Any]:
    from . import views as views

    app = con.ingress
    if who.source is not None:
        found, more = await source_batches(app, who.source, views.PAGE, after)
    else:
        batches = con.producer.batches
        found = await batches.list(views.PAGE + 1, after)
        found, more = found[: views.PAGE], len(found) > views.PAGE
    return {"viewer": who, "batches": found, "more": more, "after": after}


async def _visible_batch(con: Console, who: Viewer, batch_id: str) -> Any:
    if who.source is not None:
        return await batch_of(con.ingress, who.source, batch_id)
    found = await con.producer.batches.get(batch_id)
    if found is None:
        raise ApiError(404, f"no batch {batch_id}")
    return found


@router.get("/batches/{batch_id}")
@page("batch.html")
async def batch_page(request: Request, con: Con, who: Who, batch_id: str) -> dict[str, Any]:
    return {"viewer": who, "batch": await _visible_batch(con, who, batch_id)}


@router.get("/batches/{batch_id}/progress")
async def batch_progress(request: Request, con: Con, who: Who, batch_id: str) -> Response:
    """The figures the page's bar follows (JSON)."""
    b = await _visible_batch(con, who, batch_id)
    counts = b.request_counts
    return JSONResponse(
        {"status": b.status, "total": counts.total, "completed": counts.completed, "failed": counts.failed}
    )


@router.post("/batches/{batch_id}/cancel")
async def batch_cancel(
    request: Request, con: Con, who: Who, batch_id: str, csrf: Annotated[str, Form(max_length=256)] = ""
) -> Response:
    """`llm-router batch cancel` (a source token: its own batches)."""
    check_csrf(who.csrf, csrf)
    await _visible_batch(con, who, batch_id)
    await con.producer.batches.cancel(batch_id)
    return _see_other(f"/console/batches/{batch_id}")


@router.get("/batches/{batch_id}/{which}.jsonl")
async def batch_file(request: Request, con: Con, who: Who, batch_id: str, which: str) -> Response:
    """The output (succeeded lines) or errors file, as `llm-router batch results` writes them."""
    if which not in ("output", "errors"):
        raise ApiError(404, f"no file {which}")
    found = await _visible_batch(con, who, batch_id)
    body = output_chunks(con.producer.batches, found.id, which)
    disposition = f'attachment; filename="{found.id}_{which}.jsonl"'
    return StreamingResponse(body, media_type="application/jsonl", headers={"Content-Disposition": disposition})


# ---------------------------------------------------------------- dead letters and quarantine


@router.get("/dlq")
@page("dlq.html")
async def dlq_page(
    request: Request, con: Con, who: Who, page: Annotated[int, Query(ge=0, le=1000)] = 0
) -> dict[str, Any]:
    from . import views as views

    return {"viewer": who, "letters": await views.dead_letters(con.ingress, who.source, page)}


@router.get("/dlq/show")
@page("dead_letter.html")
async def dlq_show(request: Request, con: Con, who: Who, id: str) -> dict[str, Any]:
    if who.source is not None and not owns(who.source, id):
        raise ApiError(404, f"{id} is not in the dead-letter list")
    letter = await DeadLetters(con.ingress.redis, con.settings.queue_name).get(id)
    if letter is None:
        raise ApiError(404, f"{id} is not in the dead-letter list")
    return {"viewer": who, "letter": letter, "payload": _json(letter.job)}


@router.post("/dlq/replay")
@page("done.html")
async def dlq_replay(
    request: Request,
    con: Con,
    who: Who,
    csrf: Annotated[str, Form(max_length=256)] = "",
    id: Annotated[str, Form(max_length=128)] = "",
    all: Annotated[bool, Form()] = False,
) -> dict[str, Any]:
    """`llm-router dlq replay ID | --all`."""
    check_csrf(who.csrf, csrf)
    who.must_operate("replaying a dead letter")
    letters = DeadLetters(con.ingress.redis, con.settings.queue_name)
    if all:
        return {"viewer": who, "message": f"replayed {await letters.replay_all()} jobs", "back": "/console/dlq"}
    try:
        replayed = await letters.replay(id)
    except ValueError as exc:
        raise ApiError(409, str(exc)) from None
    if not replayed:
        raise ApiError(404, f"{id} is not in the dead-letter list")
    return {"viewer": who, "message": f"replayed {id}", "back": f"/console/jobs?id={quote(id)}"}


@router.get("/{store}/purge")
@page("purge.html")
async def purge_confirm(request: Request, con: Con, who: Who, store: str) -> dict[str, Any]:
    """The confirmation step before a purge."""
    who.must_operate("purging")
    if store == "dlq":
        count = await DeadLetters(con.ingress.redis, con.settings.queue_name).size()
    elif store == "quarantine":
        count = len(await _quarantine(con).list(con.settings.quarantine_max))
    else:
        raise ApiError(404, f"nothing to purge at {store}")
    return {"viewer": who, "store": store, "count": count}


@router.post("/{store}/purge")
@page("done.html")
async def purge(
    request: Request,
    con: Con,
    who: Who,
    store: str,
    csrf: Annotated[str, Form(max_length=256)] = "",
    confirm: Annotated[str, Form(max_length=16)] = "",
) -> dict[str, Any]:
    """`llm-router dlq purge` / `quarantine purge`, once the confirmation form says so."""
    check_csrf(who.csrf, csrf)
    who.must_operate("purging")
    if store not in ("dlq", "quarantine"):
        raise ApiError(404, f"nothing to purge at {store}")
    if confirm != "purge":
        raise ApiError(400, "type purge in the confirmation field to purge")
    if store == "dlq":
        count = await DeadLetters(con.ingress.redis, con.settings.queue_name).purge()
        return {"viewer": who, "message": f"purged {count} dead letters", "back": "/console/dlq"}
    count = await _quarantine(con).purge()
    return {"viewer": who, "message": f"purged {count} quarantined entries", "back": "/console/quarantine"}


def _quarantine(con: Console) -> Quarantine:
    return Quarantine(con.ingress.redis, con.settings.queue_name, con.settings.quarantine_max)


@router.get("/quarantine")
@page("quarantine.html")
async def quarantine_page(
    request: Request, con: Con, who: Who, page: Annotated[int, Query(ge=0, le=1000)] = 0
) -> dict[str, Any]:
    from . import views as views

    who.must_operate("the quarantine")
    return {"viewer": who, "entries": await views.quarantined(con.ingress, page)}


# ---------------------------------------------------------------- schedules


@router.get("/schedules")
@page("schedules.html")
async def schedules_page(request: Request, con: Con, who: Who) -> dict[str, Any]:
    from worker.batches import schedules as schedule_config
    from worker.schedule_cli import schedule_rows

    who.must_operate("schedules")
    found = schedule_config.load(con.settings, check_files=False)
    rows = await schedule_rows(con.producer.batches, found)
    return {"viewer": who, "schedules": rows}


@router.post("/schedules/{name}/run")
@page("done.html")
async def schedule_run(
    request: Request, con: Con, who: Who, name: str, csrf: Annotated[str, Form(max_length=256)] = ""
) -> dict[str, Any]:
    """`llm-router schedule run NAME`."""
    from worker.batches import schedules as schedule_config
    from worker.contract.settings import ConfigError
    from worker.schedule_cli import run_now

    from ..batches import BatchRejected

    check_csrf(who.csrf, csrf)
    who.must_operate("running a schedule")
    by_name = {s.name: s for s in schedule_config.load(con.settings, check_files=False)}
    if name not in by_name:
        raise ApiError(404, f"no schedule {name!r} in SCHEDULES_FILE")
    try:
        batch, created = await run_now(con.producer.batches, by_name[name])
    except (BatchRejected, ConfigError) as exc:
        raise ApiError(400, str(exc)) from None
    said = f"submitted {batch.id}" if created else f"{batch.id} was submitted this second already"
    return {"viewer": who, "message": said, "back": f"/console/batches/{batch.id}"}


# ---------------------------------------------------------------- spend


@router.get("/spend")
@page("spend.html")
async def spend_page(
    request: Request,
    con: Con,
    who: Who,
    days: Annotated[int, Query(ge=1, le=366)] = 14,
    by: str = "model",
    source: Annotated[str, Query(pattern=r"^[A-Za-z0-9_.:-]{0,64}$")] = "",
    page: Annotated[int, Query(ge=0, le=1000)] = 0,
) -> dict[str, Any]:
    """`llm-router spend --days N --by X` (its rows a page at a time: by batch they are many),
    and one source's spend by model with the cache's savings (an operator: the `source` asked
    for; a source token: its own, and its own line only)."""
    from worker.observe.spend import report, source_report

    from . import views as views

    if by not in SPEND_BY:
        raise ApiError(400, f"by: {by!r} is not one of {', '.join(SPEND_BY)}")
    shown = who.source if who.source is not None else (source or None)
    if who.source is not None:
        by = "source"
    budgets = con.settings.budgets if con.settings.budgets.configured and who.operator else None
    found = (await report(con.ingress.redis, days, by, budgets, con.settings.budget_tz)).as_json()
    if who.source is not None:  # only its own line; the days' totals are every source's
        found["rows"] = [r for r in found["rows"] if r["name"] == who.source]
    if shown is not None:  # the chart: the source's days
        found["daily"] = await _source_daily(con, shown, found["days"])
    by_model = None if shown is None else (await source_report(con.ingress.redis, days, shown)).as_json()
    rows = found["rows"]
    found["rows"] = rows[page * views.PAGE : (page + 1) * views.PAGE]
    return {
        "viewer": who,
        "report": found,
        "by_model": by_model,
        "source": shown or "",
        "chart": views.spend_chart(found["daily"]),
        "days": days,
        "by": by,
        "rows": views.Page(found["rows"], page, len(rows) > (page + 1) * views.PAGE),
        "choices": SPEND_BY if who.operator else ("source",),
    }


async def _source_daily(con: Console, source: str, days: list[str]) -> list[dict[str, Any]]:
    from worker.observe.spend import read_day

    out = []
    for day in days:
        line = (await read_day(con.ingress.redis, "source", day)).get(source)
        out.append({"day": day, "usd": line.usd if line else 0.0, "calls": line.calls if line else 0})
    return out


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, default=str)


# ---------------------------------------------------------------- the app


def mount(app: FastAPI, settings: Settings, secret: str) -> None:
    """Serve the console on `app` under /console/ (its static files under /console/static/)."""
    app.state.console = Console(app, settings, secret)
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=str(ASSETS / "static")), name="console-static")

    @app.get("/console", include_in_schema=False)
    async def bare() -> Response:
        return _see_other("/console/")


def _utc(value: Any) -> str:
    """A time as ISO 8601 UTC (a datetime, or UNIX seconds); the page's script shows it in the
    viewer's zone."""
    if value is None or value == "":
        return ""
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return str(value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
