"""Schedules: bulk batches on a cron schedule, fired by the workers, exactly one batch per tick.

Configuration, not state: a TOML file named by SCHEDULES_FILE, read by every worker at start-up
(a bad schedule refuses the start: exit 2, one line naming the schedule, the field and the fix)
and by the exporter and `llm-router schedule` (which read it without checking the input files).

    [[schedule]]
    name = "nightly-summaries"             # letters, digits and _ . - (at most 64)
    cron = "0 2 * * *"                     # 5 fields; a 6th is seconds (croniter's convention: last)
    timezone = "Europe/Berlin"             # IANA; default UTC
    prompts = "/data/prompts.csv"          # or: input = "/data/requests.jsonl" (OpenAI batch JSONL)
    template = "Summarise: {text}"
    model = "gpt-4.1-mini"
    params = { max_tokens = 200 }          # body parameters of every line (and `system`)
    metadata = { team = "search" }
    window = "24h"                         # completion window
    budget_usd = 5.0                       # optional: each tick's batch's budget (worker.limits.budgets)
    output = "/data/out/summaries-{date}.jsonl"   # optional: {name} {date} {time} {tick} {batch_id}
    errors = "/data/out/failed-{date}.jsonl"

How a tick becomes one batch, whatever the number of workers (each runs `Scheduler`):

- The tick's batch id is derived from the schedule and the tick: `batch_sched_<name>_<yyyymmddThhmmssZ>`
  (UTC), so creating it twice is a no-op (worker.batches.store creates the record atomically).
- A worker that sees the latest tick due and not yet fired claims it: `SET
  llm-router:schedule:claim:<batch_id> NX PX LEASE_S`, renewed while it validates and writes. If it
  dies, the claim expires and the next worker takes the tick over: a record left `validating` (lines
  written, none released) is dropped and submitted again; one already released is the tick's batch.
  A stalled owner's late writes are fenced by the record's owner token (worker.batches.store).
- Only the latest tick is considered, and only within SCHEDULE_GRACE_S of its time: a tick missed
  while no worker ran is fired once at start-up, never once per missed tick nor once per worker.
- When a scheduled batch is final, one worker (`SET llm-router:schedule:output:<batch_id> NX`)
  writes its output and error files (to a temporary name, then renamed) and records the
  schedule's last success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import string
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from redis.asyncio import Redis

from ..contract.keys import SCHEDULES_PENDING, batch_key, schedule_claim_key, schedule_key, schedule_output_key
from ..contract.settings import ConfigError, Settings
from ..lua import registry as lua
from . import record as wb
from .format import prompt_lines

if TYPE_CHECKING:
    from .store import BatchStore

log = logging.getLogger("llm_router.schedules")

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TICK_FORMAT = "%Y%m%dT%H%M%SZ"
_SCHED_ID = re.compile(r"^batch_sched_([A-Za-z0-9_.-]{1,64})_([0-9]{8}T[0-9]{6}Z)$")
# How often a worker looks at its schedules (ticks due, batches final).
POLL_S = 0.5
PLACEHOLDERS = ("name", "date", "time", "tick", "batch_id")
_PLACEHOLDERS_SHOWN = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
FIELDS = (
    "name",
    "cron",
    "timezone",
    "input",
    "prompts",
    "template",
    "model",
    "system",
    "params",
    "metadata",
    "window",
    "budget_usd",
    "output",
    "errors",
)
# Metadata every scheduled batch carries (so a schedule's own metadata has at most 14 pairs).
AUTO_METADATA = ("schedule", "scheduled_for")
_EPSILON = timedelta(microseconds=1)


@dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    timezone: str = "UTC"
    input: str | None = None
    prompts: str | None = None
    template: str | None = None
    model: str | None = None
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    window: str = "24h"
    budget_usd: float | None = None
    output: str | None = None
    errors: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def window_s(self) -> float:
        return wb.window_seconds(self.window)

    def latest_tick(self, now: float) -> datetime:
        """The latest tick at or before `now` (aware, in the schedule's timezone)."""
        # croniter's get_prev is strictly before its start: start a microsecond on
        tick: datetime = croniter(self.cron, datetime.fromtimestamp(now, self.tz) + _EPSILON).get_prev(datetime)
        return tick

    def next_tick(self, now: float) -> datetime:
        tick: datetime = croniter(self.cron, datetime.fromtimestamp(now, self.tz)).get_next(datetime)
        return tick

    def batch_id(self, tick: datetime) -> str:
        return f"batch_sched_{self.name}_{tick.astimezone(UTC).strftime(TICK_FORMAT)}"

    def source(self) -> Any:
        """What `BatchStore.submit` reads: the JSONL path, or the lines made from the prompts file."""
        if self.input is not None:
            return Path(self.input)
        assert self.prompts is not None and self.template is not None and self.model is not None
        return prompt_lines(self.prompts, self.template, self.model, system=self.system, **self.params)

    def paths(self, batch_id: str) -> tuple[str | None, str | None]:
        """The output and error paths of one of its batches, placeholders filled in."""
        tick = tick_of(batch_id) or datetime.now(UTC)
        local = tick.astimezone(self.tz)
        values = {
            "name": self.name,
            "date": local.strftime("%Y-%m-%d"),
            "time": local.strftime("%H%M%S"),
            "tick": tick.strftime(TICK_FORMAT),
            "batch_id": batch_id,
        }
        return tuple(p.format(**values) if p else None for p in (self.output, self.errors))  # type: ignore[return-value]


def tick_of(batch_id: str) -> datetime | None:
    match = _SCHED_ID.match(batch_id)
    return datetime.strptime(match[2], TICK_FORMAT).replace(tzinfo=UTC) if match else None


def schedule_of(batch_id: str) -> str | None:
    match = _SCHED_ID.match(batch_id)
    return match[1] if match else None


# ---------------------------------------------------------------- the file


def load(settings: Settings, check_files: bool = True) -> list[Schedule]:
    """The schedules of SCHEDULES_FILE ([] without one), or a ConfigError naming the schedule, the
    field and the fix. `check_files`: the input must exist on this host (workers check it)."""
    if not settings.schedules_file:
        return []
    path = Path(settings.schedules_file)
    where = f"SCHEDULES_FILE {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist: fix the path, or unset SCHEDULES_FILE") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML ({exc}): fix the file") from None
    extra = set(data) - {"schedule"}
    if extra:
        raise ConfigError(f"{where}: {sorted(extra)[0]!r} is not a table of this file: use [[schedule]] entries")
    entries = data.get("schedule", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: write each schedule as a [[schedule]] table")
    found: list[Schedule] = []
    seen: set[str] = set()
    for number, entry in enumerate(entries, start=1):
        schedule = _schedule(entry, f"{where}: schedule #{number}", check_files)
        if not schedule.window_s <= settings.batch_max_window_s:  # (a batch would refuse it at every tick)
            raise ConfigError(
                f"{where}: schedule {schedule.name!r}: window: {schedule.window!r} is over "
                f"BATCH_MAX_WINDOW_S={settings.batch_max_window_s:g} seconds: use a shorter window"
            )
        if schedule.name in seen:
            raise ConfigError(
                f"{where}: schedule {schedule.name!r}: name: used by another schedule: give each a unique name"
            )
        seen.add(schedule.name)
        found.append(schedule)
    return found


def _schedule(entry: Any, where: str, check_files: bool) -> Schedule:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: write each schedule as a [[schedule]] table")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(
            f"{where}: name: {name!r} is not a name: 1-64 letters, digits and _ . - (it is part of the batch ids)"
        )
    where = where.rsplit(": schedule #", 1)[0] + f": schedule {name!r}"

    def bad(field_name: str, problem: str) -> ConfigError:
        return ConfigError(f"{where}: {field_name}: {problem}")

    for key in entry:
        if key not in FIELDS:
            raise bad(key, f"not a field of a schedule: use {', '.join(FIELDS)}")
    for key in ("cron", "timezone", "input", "prompts", "template", "model", "system", "window", "output", "errors"):
        if key in entry and not isinstance(entry[key], str):
            raise bad(key, f"must be a string, not {entry[key]!r}")
    cron = entry.get("cron")
    if cron is None:
        raise bad("cron", 'missing: give a cron expression, e.g. cron = "0 2 * * *" (02:00 every day)')
    if len(cron.split()) not in (5, 6) or not croniter.is_valid(cron):
        raise bad(
            "cron",
            f"{cron!r} is not a cron expression: 5 fields (minute hour day month weekday), "
            "or 6 with seconds last, e.g. '0 2 * * *' or '*/10 * * * * 30'",
        )
    timezone = entry.get("timezone", "UTC")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise bad(
            "timezone", f"{timezone!r} is not an IANA time zone: e.g. UTC, Europe/Berlin, America/New_York"
        ) from None
    window = entry.get("window", "24h")
    try:
        wb.window_seconds(window)
    except ValueError as exc:
        raise bad("window", str(exc)) from None
    metadata = entry.get("metadata", {})
    if (
        not isinstance(metadata, dict)
        or len(metadata) > 16 - len(AUTO_METADATA)
        or not all(
            isinstance(k, str) and 0 < len(k) <= 64 and isinstance(v, str) and len(v) <= 512
            for k, v in metadata.items()
        )
    ):
        raise bad("metadata", "at most 14 pairs of strings (keys of 1-64 characters, values of up to 512)")
    if set(metadata) & set(AUTO_METADATA):
        raise bad("metadata", f"{' and '.join(AUTO_METADATA)} are set by the schedule: use other keys")
    budget_usd = entry.get("budget_usd")
    if budget_usd is not None and (
        isinstance(budget_usd, bool) or not isinstance(budget_usd, (int, float)) or not 0 <= budget_usd < math.inf
    ):
        raise bad("budget_usd", f"must be a number of USD, 0 or more, not {budget_usd!r}")
    params = entry.get("params", {})
    if not isinstance(params, dict):
        raise bad("params", "must be a table of body parameters, e.g. params = { max_tokens = 200 }")
    for key in ("output", "errors"):
        if key in entry:
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(entry[key]) if f is not None}
            except ValueError as exc:
                raise bad(key, f"{exc}: write {{{{ and }}}} for a literal brace") from None
            unknown = names - set(PLACEHOLDERS)
            if unknown:
                raise bad(
                    key,
                    f"unknown placeholder {{{sorted(unknown)[0]}}}: use {_PLACEHOLDERS_SHOWN}",
                )
    if "errors" in entry and "output" not in entry:
        raise bad("errors", "an errors path needs an output path too")
    schedule = Schedule(
        name=name,
        cron=cron,
        timezone=timezone,
        input=entry.get("input"),
        prompts=entry.get("prompts"),
        template=entry.get("template"),
        model=entry.get("model"),
        system=entry.get("system"),
        params=dict(params),
        metadata=dict(metadata),
        window=window,
        budget_usd=None if budget_usd is None else float(budget_usd),
        output=entry.get("output"),
        errors=entry.get("errors"),
    )
    if (schedule.input is None) == (schedule.prompts is None):
        raise bad("input", "give input (a JSONL file of requests) or prompts (with template and model), not both")
    if schedule.prompts is not None and (schedule.template is None or schedule.model is None):
        raise bad("template" if schedule.template is None else "model", "prompts needs a template and a model")
    if schedule.input is not None:
        for key in ("template", "model", "system", "params"):
            if key in entry:
                raise bad(key, "only with prompts: an input file's lines carry their own bodies")
    if check_files:
        check_input(schedule, where)
    return schedule


def check_input(schedule: Schedule, where: str) -> None:
    """The input must be readable here (at the same path on every worker host)."""
    field_name, path = ("input", schedule.input) if schedule.input is not None else ("prompts", schedule.prompts)
    assert path is not None
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(
            f"{where}: {field_name}: {path} does not exist (or is not a readable file) on this host: "
            "put it at that path on every worker host (the image or a shared volume), or fix the path"
        )
    if schedule.prompts is not None:
        try:
            prompt_lines(schedule.prompts, schedule.template or "", schedule.model or "")
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: template: {exc}") from None


# ---------------------------------------------------------------- submitting


async def submit(store: BatchStore, schedule: Schedule, batch_id: str, tick: datetime) -> tuple[wb.Batch, bool]:
    """Submit the schedule's input as the batch `batch_id` (a no-op if it exists) and record it
    as the schedule's last batch, pending its output. (batch, created by this call)."""
    metadata = {**schedule.metadata, "schedule": schedule.name, "scheduled_for": tick.astimezone(UTC).isoformat()}
    batch, created = await store.create(
        schedule.source(),
        completion_window=schedule.window,
        metadata=metadata,
        batch_id=batch_id,
        budget_usd=schedule.budget_usd,
    )
    await _recorded(store.redis, schedule.name, batch_id, None)
    return batch, created


async def _recorded(redis: Redis, name: str, batch_id: str, tick: float | None) -> None:
    async with redis.pipeline(transaction=True) as tx:
        fields: dict[str, Any] = {"last_batch": batch_id}
        if tick is not None:
            fields["last_tick"] = tick
        tx.hset(schedule_key(name), mapping=fields)
        tx.zadd(SCHEDULES_PENDING, {batch_id: time.time()}, nx=True)
        await tx.execute()


class Scheduler:
    """One per worker process: fires its schedules' ticks (exactly one batch per tick across all
    workers) and hands finished scheduled batches their output files."""

    def __init__(self, store: BatchStore, schedules: list[Schedule]) -> None:
        self.store = store
        self.redis = store.redis
        self.settings = store.settings
        self.schedules = {s.name: s for s in schedules}
        self.lease_ms = max(int(self.settings.lease_s * 1000), 1000)
        self._handled: dict[str, float] = {}  # schedule -> the latest tick known fired (or skipped)
        self._claim = lua.register(self.redis, "schedules_claim")  # renew or release a tick's claim

    async def run(self) -> None:
        await self.apply()
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("schedules: will retry")
            await asyncio.sleep(POLL_S)

    async def apply(self) -> None:
        """Note when each schedule was first applied (ticks before it are not overdue)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in self.schedules:
                pipe.hsetnx(schedule_key(name), "since", str(time.time()))
            await pipe.execute()
        log.info("schedules: %s", ", ".join(f"{s.name} ({s.cron}, {s.timezone})" for s in self.schedules.values()))

    async def step(self, now: float | None = None) -> None:
        for schedule in self.schedules.values():
            await self.consider(schedule, time.time() if now is None else now)
        await self.deliver()

    async def consider(self, schedule: Schedule, now: float) -> None:
        tick = schedule.latest_tick(now)
        at = tick.timestamp()
        if self._handled.get(schedule.name, -1.0) >= at:
            return
        last = await self.redis.hget(schedule_key(schedule.name), "last_tick")  # type: ignore[misc]
        if last is not None and float(last) >= at:
            self._handled[schedule.name] = at
            return
        late = now - at
        if late > self.settings.schedule_grace_s:
            log.warning(
                "schedule %s: tick %s missed by %.0fs, past SCHEDULE_GRACE_S=%g: skipped",
                schedule.name,
                tick.isoformat(),
                late,
                self.settings.schedule_grace_s,
            )
            self._handled[schedule.name] = at
            return
        await self.fire(schedule, tick)

    async def fire(self, schedule: Schedule, tick: datetime) -> bool:
        """Claim the tick and submit its batch; False if another worker holds the claim."""
        batch_id = schedule.batch_id(tick)
        claim, token = schedule_claim_key(batch_id), uuid.uuid4().hex
        if not await self.redis.set(claim, token, nx=True, px=self.lease_ms):
            return False
        renew = asyncio.create_task(self._renew(claim, token))
        at = tick.timestamp()
        try:
            existing = await self.store.get(batch_id)
            if existing is not None and (existing.status == "validating" or existing.interrupted):
                # its submitter died (its claim expired, we hold it now): lines written, none queued
                # (a reader may have reaped it already: `failed`, interrupted)
                if await self.store.drop_unreleased(batch_id):
                    log.warning(
                        "schedule %s: batch %s left unfinished by a dead worker: submitting it again",
                        schedule.name,
                        batch_id,
                    )
                existing = None
            if existing is not None:
                await _recorded(self.redis, schedule.name, batch_id, at)
                self._handled[schedule.name] = at
                return True
            try:
                batch, created = await submit(self.store, schedule, batch_id, tick)
            except (OSError, ValueError) as exc:  # unreadable or refused input (BatchRejected is a ValueError)
                log.error("schedule %s: tick %s: no batch: %s", schedule.name, tick.isoformat(), exc)
                await self.redis.hset(  # type: ignore[misc]
                    schedule_key(schedule.name), mapping={"last_tick": at, "last_error": str(exc)[:500]}
                )
                self._handled[schedule.name] = at
                return True
            await _recorded(self.redis, schedule.name, batch_id, at)
            self._handled[schedule.name] = at
            if created:
                log.info(
                    "schedule %s: tick %s: batch %s submitted (%d lines)",
                    schedule.name,
                    tick.isoformat(),
                    batch_id,
                    batch.request_counts.total,
                )
            return True
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            await self._claim(keys=[claim], args=[token, "release", self.lease_ms])

    async def _renew(self, claim: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                if not await self._claim(keys=[claim], args=[token, "renew", self.lease_ms]):
                    log.warning("schedules: lost the claim %s", claim)
                    return
            except Exception:
                log.exception("schedules: could not renew %s", claim)

    async def deliver(self) -> None:
        """Scheduled batches now final: one worker writes each one's output and records success."""
        ids = [i.decode() for i in await self.redis.zrange(SCHEDULES_PENDING, 0, 99)]
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in ids:
                pipe.hmget(batch_key(batch_id), ["status", "completed_at", "purge_at"])
                pipe.get(schedule_output_key(batch_id))
            read = await pipe.execute()
        for i, batch_id in enumerate(ids):
            (status, completed_at, purge_at), marker = read[2 * i], read[2 * i + 1]
            name = schedule_of(batch_id)
            if status is None or (marker is not None and not marker.startswith(b"w:")):
                await self.redis.zrem(SCHEDULES_PENDING, batch_id)  # purged, or its output is done
                continue
            if marker is not None or status.decode() not in wb.FINAL_STATUSES or name not in self.schedules:
                continue  # being written by another worker, not final yet, or not a schedule of ours
            await self._deliver(self.schedules[name], batch_id, status.decode(), completed_at, int(purge_at))

    async def _deliver(
        self, schedule: Schedule, batch_id: str, status: str, completed_at: bytes | None, purge_at: int
    ) -> None:
        key, token = schedule_output_key(batch_id), "w:" + uuid.uuid4().hex
        if not await self.redis.set(key, token, nx=True, px=self.lease_ms * 4):
            return  # another worker is writing it
        output, errors = schedule.paths(batch_id)
        outcome = "done"
        try:
            written = await self._write_files(batch_id, output, errors)
            if output:
                log.info(
                    "schedule %s: batch %s %s: wrote %d lines to %s and %d to %s",
                    schedule.name,
                    batch_id,
                    status,
                    written[0],
                    output,
                    written[1],
                    errors or "(none)",
                )
        except OSError as exc:
            outcome = f"failed: {exc}"[:500]
            log.error("schedule %s: batch %s: cannot write its output: %s", schedule.name, batch_id, exc)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.set(key, outcome, exat=purge_at)
            if outcome == "done" and status == "completed":
                tx.hset(
                    schedule_key(schedule.name),
                    mapping={"last_success": float(completed_at or time.time()), "last_success_batch": batch_id},
                )
            elif outcome != "done":
                tx.hset(schedule_key(schedule.name), "last_error", outcome)
            tx.zrem(SCHEDULES_PENDING, batch_id)
            await tx.execute()

    async def _write_files(self, batch_id: str, output: str | None, errors: str | None) -> tuple[int, int]:
        if not output:
            return 0, 0
        targets = [Path(output), Path(errors)] if errors else [Path(output)]
        temps = [t.with_name(f".{t.name}.{uuid.uuid4().hex[:8]}.tmp") for t in targets]
        for t in targets:
            t.parent.mkdir(parents=True, exist_ok=True)
        files = [t.open("w", encoding="utf-8") for t in temps]
        try:
            counts = await self.store.write_results(batch_id, files[0], files[1] if errors else None)
        except BaseException:
            for f, t in zip(files, temps, strict=True):
                f.close()
                t.unlink(missing_ok=True)
            raise
        for f, tmp, target in zip(files, temps, targets, strict=True):
            f.close()
            os.replace(tmp, target)  # whole or not at all
        return counts
