"""`llm-router schedule` (operator verbs, beside worker.batches.schedules):

    llm-router schedule list [--json]   each schedule: cron, next run, last batch and its status
    llm-router schedule run NAME        a batch of it now (id: the name and the current second)

Both read SCHEDULES_FILE as the workers do. `run` submits from this process, so it reads the
schedule's input here; its output file is written by a worker when the batch completes.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .cli import NO_SUCH_ID, Verbs, run
from .contract.settings import load_settings

if TYPE_CHECKING:
    from .batches.store import BatchStore


@click.group()
def cli() -> None:
    """Schedule verbs."""


@cli.group(cls=Verbs)
def schedule() -> None:
    """Scheduled batches (SCHEDULES_FILE): list, run."""


def _on_store(body: Any) -> NoReturn:
    """Run `body(store, found)`: a batch store on the settings' Redis and queue, the schedules."""
    from .batches import schedules
    from .batches.store import BatchStore
    from .contract.connections import async_redis
    from .contract.records import JobRecords

    async def main() -> int:
        settings = load_settings()
        found = schedules.load(settings, check_files=False)
        redis = async_redis(settings.redis_url)
        try:
            return int(await body(BatchStore(JobRecords(redis, settings)), found))
        finally:
            await redis.aclose()

    run(main())


@schedule.command("list")
@click.option(
    "--json", "as_json", is_flag=True, help="print the rows as a JSON array (last counts, last success and error too)"
)
def schedule_list(as_json: bool) -> None:
    """Every schedule: cron, time zone, next run, last batch and its status, last success."""

    async def body(store: Any, found: list[Any]) -> int:
        rows = await schedule_rows(store, found)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return 0
        if not rows:
            click.echo("no schedules (set SCHEDULES_FILE)")
        for r in rows:
            last = f"{r['last_batch']} {r['last_status']}" if r["last_batch"] else "no batch yet"
            click.echo(f"{r['name']}  {r['cron']} ({r['timezone']})  next {r['next_run']}  last {last}")
        return 0

    _on_store(body)


async def schedule_rows(store: BatchStore, found: list[Any]) -> list[dict[str, Any]]:
    """Each schedule's row (`schedule list --json`, the console's Schedules page): cron, time
    zone, next run, last batch and its status, last success and error."""
    from .contract.keys import schedule_key

    now = time.time()
    rows = []
    for s in found:
        state = {k.decode(): v.decode() for k, v in (await store.redis.hgetall(schedule_key(s.name))).items()}  # type: ignore[misc]
        last = state.get("last_batch")
        batch = await store.get(last) if last else None
        success = state.get("last_success")
        rows.append(
            {
                "name": s.name,
                "cron": s.cron,
                "timezone": s.timezone,
                "next_run": s.next_tick(now).isoformat(),
                "last_batch": last,
                "last_status": batch.status if batch else None,
                "last_counts": batch.request_counts.model_dump() if batch else None,
                "last_success": datetime.fromtimestamp(float(success), UTC).isoformat() if success else None,
                "last_error": state.get("last_error"),
                "output": s.output,
            }
        )
    return rows


async def run_now(store: BatchStore, s: Any) -> tuple[Any, bool]:
    """Submit a batch of schedule `s` now (`schedule run`, the console's Run now): the batch and
    whether this call created it. Raises BatchRejected, and ConfigError for an unreadable input."""
    from .batches import schedules
    from .batches.format import BatchRejected
    from .contract.settings import ConfigError

    schedules.check_input(s, f"SCHEDULES_FILE {store.settings.schedules_file}: schedule {s.name!r}")
    tick = datetime.now(UTC).replace(microsecond=0)
    try:
        return await schedules.submit(store, s, s.batch_id(tick), tick)
    except BatchRejected:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"schedule {s.name!r}: {exc}") from None


@schedule.command("run")
@click.argument("name")
def schedule_run(name: str) -> None:
    """Submit a batch of schedule NAME now; prints its id (batch_sched_<name>_<now, UTC>)."""
    from .batches.format import BatchRejected

    async def body(store: Any, found: list[Any]) -> int:
        by_name = {s.name: s for s in found}
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            click.echo(f"llm-router: no schedule {name!r} in SCHEDULES_FILE (schedules: {known})", err=True)
            return NO_SUCH_ID
        try:
            batch, created = await run_now(store, by_name[name])
        except BatchRejected as exc:
            click.echo(f"llm-router: {exc}", err=True)
            return 2
        click.echo(batch.id)
        if not created:
            click.echo(f"(a batch of {name} was submitted this second already: that one)", err=True)
        return 0

    _on_store(body)
