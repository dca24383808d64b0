"""What the console's pages show, read through the code the operator verbs and the exporter
already use (no query of its own): the exporter's gauges (worker.observe.exporter) for the queue, the
fleet report (`llm-router fleet`), the spend report (`llm-router spend`), the schedule rows
(`llm-router schedule list`), dead letters and quarantine (worker.outputs.dlq, worker.process.quarantine),
batches (producers.batches and the ingress's per-source list). Each read is bounded: lists
come a page at a time."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from worker.contract.keys import DLQ, in_progress_key, model_key, recent_jobs_key
from worker.contract.serde import as_text
from worker.limits import fair
from worker.limits.gate import Gate
from worker.observe import spend
from worker.observe.exporter import QueueCollector
from worker.observe.metrics import known_models
from worker.outputs.dlq import DeadLetter, DeadLetters
from worker.process import fleet
from worker.process.quarantine import Quarantine

from ..http.deps import Ingress

PAGE = 50  # rows of a list page


@dataclass
class Page:
    """One page of a list: its rows, its number (from 0) and whether another follows."""

    rows: list[Any]
    number: int
    more: bool


async def overview(app: Ingress, collector: QueueCollector, operator: bool, source: str | None) -> dict[str, Any]:
    """The Overview page: the exporter's gauges (queue, lanes, paused, credits, dead letters,
    workers), the fleet's digests, open circuits, each source's queue (`llm-router sources`: all
    of them for an operator, `source`'s alone for a source token); for an operator, today's
    spend and budgets."""
    gauges = await asyncio.to_thread(_gauges, collector)
    sources = await fair.report(app.redis, app.settings, time.time())
    out: dict[str, Any] = {
        "gauges": gauges,
        "sources": [r for r in sources if operator or r["source"] == source],
        "fair_share": app.settings.fair_share,
        "running": await running_jobs(app),
        "paused": await Gate(app.redis, app.settings.probe_interval_s).read(),
        "fleet": await fleet.report(app.redis, app.settings.queue_name),
        "circuits": await open_circuits(app),
    }
    if operator:
        budgets = app.settings.budgets if app.settings.budgets.configured else None
        out["spend"] = (await spend.report(app.redis, 1, "model", budgets, app.settings.budget_tz)).as_json()
    return out


def _gauges(collector: QueueCollector) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The exporter's families as {name: [(labels, value)]} (its own read, in a thread: it is sync)."""
    return {
        family.name: [(dict(s.labels), s.value) for s in family.samples if s.name == family.name]
        for family in collector.collect()
    }


async def running_jobs(app: Ingress) -> int:
    """Jobs a worker runs now: the queue's entries scored later than now (a running job's entry
    is scored at its lease's end) that hold an in-progress mark, among the first QUEUE_SCANNED."""
    now_ms = int(time.time() * 1000)
    later = await app.redis.zrangebyscore(app.settings.queue_name, now_ms, "+inf", start=0, num=QUEUE_SCANNED)
    if not later:
        return 0
    async with app.redis.pipeline(transaction=False) as pipe:
        for raw in later:
            pipe.exists(in_progress_key(raw.decode()))
        return sum(await pipe.execute())


async def open_circuits(app: Ingress) -> list[dict[str, Any]]:
    """The models of the configuration whose circuit is open, and until when (UNIX s)."""
    models = sorted(known_models(app.settings))
    async with app.redis.pipeline(transaction=False) as pipe:
        for model in models:
            pipe.hget(model_key(model), "open_until")
        found = await pipe.execute()
    now_ms = (await app.redis.time())[0] * 1000
    return [
        {"model": m, "until": float(raw) / 1000}
        for m, raw in zip(models, found, strict=True)
        if raw is not None and float(raw) > now_ms
    ]


async def dead_letters(app: Ingress, source: str | None, number: int) -> Page:
    """A page of dead letters, newest first: every one for an operator, the source's (id
    `<source>@...`) for a source token."""
    letters = DeadLetters(app.redis, app.settings.queue_name)
    ids = await letters.ids()
    if source is not None:
        ids = [i for i in ids if i.startswith(f"{source}@")]
    chunk = ids[number * PAGE : (number + 1) * PAGE]
    raw = await app.redis.hmget(DLQ, chunk) if chunk else []  # type: ignore[misc]
    rows = [DeadLetter.model_validate_json(r) for r in raw if r is not None]
    return Page(rows, number, len(ids) > (number + 1) * PAGE)


async def quarantined(app: Ingress, number: int) -> Page:
    found = await Quarantine(app.redis, app.settings.queue_name, app.settings.quarantine_max).list(
        (number + 1) * PAGE + 1
    )
    return Page(found[number * PAGE : (number + 1) * PAGE], number, len(found) > (number + 1) * PAGE)


# The queue entries the Jobs page looks through for a source's jobs (the oldest first).
QUEUE_SCANNED = 5000


async def queued_jobs(app: Ingress, source: str | None, number: int = 0) -> Page:
    """Page `number` of the jobs in the queue (waiting, deferred or running under a lease) and, under
    fair share, in the sources' sub-queues (`waiting its share` there: not yet picked), oldest first, of
    `source` (ids `<source>@...`; None: every source's), among the first QUEUE_SCANNED entries of
    each."""
    if source is None and not await app.redis.exists(fair.passes_key(app.settings.queue_name)):
        # no sub-queue holds a job: every entry of the queue is one, read the page alone
        entries = await app.redis.zrange(app.settings.queue_name, number * PAGE, (number + 1) * PAGE, withscores=True)
        found = [(raw.decode(), score, False) for raw, score in entries]
    else:
        found = await _scanned(app, source)
        found = found[number * PAGE : (number + 1) * PAGE + 1]
    mine = found[:PAGE]
    async with app.redis.pipeline(transaction=False) as pipe:
        for job_id, _, _ in mine:
            pipe.exists(in_progress_key(job_id))
        running = await pipe.execute() if mine else []
    rows = [
        {"id": job_id, "status": "waiting its share" if sub else "running" if on else "queued", "due": score / 1000}
        for (job_id, score, sub), on in zip(mine, running, strict=True)
    ]
    return Page(rows, number, len(found) > PAGE)


async def _scanned(app: Ingress, source: str | None) -> list[tuple[str, float, bool]]:
    """(id, score, in a sub-queue) of the queue's first QUEUE_SCANNED entries and each sub-queue's
    with jobs waiting, of `source` (None: all), oldest first."""
    queue = app.settings.queue_name
    subs = [as_text(s) for s in await app.redis.zrange(fair.passes_key(queue), 0, -1)]
    async with app.redis.pipeline(transaction=False) as pipe:
        for key in (queue, *(fair.waiting_key(queue, s) for s in subs)):
            pipe.zrange(key, 0, QUEUE_SCANNED - 1, withscores=True)
        queue_entries, *sub_entries = await pipe.execute()
    found = [(raw.decode(), score, False) for raw, score in queue_entries]
    found += [(raw.decode(), score, True) for entries in sub_entries for raw, score in entries]
    if source is not None:
        found = [f for f in found if f[0].startswith(f"{source}@")]
    return sorted(found, key=lambda f: f[1])


@dataclass
class Recent:
    """A page of the jobs that ended lately, newest first: its rows and, if older ones follow,
    the entry id the next page starts before."""

    rows: list[dict[str, Any]]
    older: str | None


async def recent_jobs(app: Ingress, source: str | None, before: str | None = None) -> Recent:
    """A page of the jobs that ended (succeeded, failed, dead-lettered), newest first: every
    source's (None) or `source`'s, from the recent-jobs streams the result's script writes
    (at most RECENT_JOBS_MAX a stream, none older than RESULT_TTL_S: their results are gone);
    `before`: the entry id the page starts before (the previous page's `older`)."""
    oldest_ms = int(time.time() * 1000) - app.settings.result_ttl_s * 1000
    end = "+" if before is None else _before(before)
    entries = [] if end is None else await app.redis.xrevrange(recent_jobs_key(source), end, oldest_ms, PAGE + 1)
    rows, seen = [], set()
    for entry_id, fields in entries[:PAGE]:
        f = {as_text(k): as_text(v) for k, v in fields.items()}
        if f["id"] in seen:  # its result written twice (a lost answer sent again): once here
            continue
        seen.add(f["id"])
        cost = f.get("cost") or None
        rows.append(
            {
                "id": f["id"],
                "status": f["status"],
                "model": f.get("model") or None,
                "cost": float(cost) if cost else None,
                "source": f.get("source") or None,
                "ended": int(as_text(entry_id).split("-")[0]) / 1000,
            }
        )
    older = as_text(entries[PAGE - 1][0]) if len(entries) > PAGE else None
    return Recent(rows, older)


def _before(entry_id: str) -> str | None:
    """The greatest stream entry id below `entry_id` (`<ms>-<seq>`); None: nothing is below it
    (a hand-made id that is not one is a 400 at the route)."""
    ms, _, seq = entry_id.partition("-")
    at, n = int(ms), int(seq or 0)
    if n > 0:
        return f"{at}-{n - 1}"
    return f"{at - 1}-18446744073709551615" if at > 0 else None


@dataclass
class Chart:
    """A bar chart of spend per day, drawn server-side as SVG (no script, no inline style)."""

    width: int = 640
    height: int = 200
    bars: list[dict[str, Any]] = field(default_factory=list)
    ticks: list[dict[str, Any]] = field(default_factory=list)


def spend_chart(daily: list[dict[str, Any]]) -> Chart:
    """Bars of each day's USD (the report's `daily`), with a scale of three ticks."""
    chart = Chart()
    left, bottom, top = 56, 24, 8
    inner_h = chart.height - bottom - top
    peak = max([d["usd"] for d in daily] + [0.0])
    scale = _nice(peak)
    slot = (chart.width - left) / max(len(daily), 1)
    for i, d in enumerate(daily):
        h = 0.0 if scale == 0 else d["usd"] / scale * inner_h
        chart.bars.append(
            {
                "x": round(left + i * slot + slot * 0.15, 1),
                "y": round(top + inner_h - h, 1),
                "w": round(slot * 0.7, 1),
                "h": round(h, 1),
                "day": d["day"],
                "usd": d["usd"],
                "label_x": round(left + i * slot + slot / 2, 1),
                "show_label": len(daily) <= 14 or i % math.ceil(len(daily) / 14) == 0,
            }
        )
    for frac in (0.0, 0.5, 1.0):
        chart.ticks.append({"y": round(top + inner_h - frac * inner_h, 1), "usd": scale * frac})
    return chart


def _nice(peak: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten at or above `peak` (0 stays 0)."""
    if peak <= 0:
        return 0.0
    power = 10 ** math.floor(math.log10(peak))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= peak)
