"""The operator verbs of `llm-router`: `worker`, `exporter` and `dlq`; and `run`, how every
verb runs its async body and turns configuration and Redis errors into one clear line."""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import click
from redis.exceptions import RedisError

from .contract.settings import ConfigError, exit_on_config_error, load_settings
from .process import logs

# The exit status of every verb given an id (a job, a batch, a dead letter, a schedule's name)
# that names nothing, and of a verb stopped by Ctrl-C (SIGINT), as a shell reports it.
NO_SUCH_ID = 4
INTERRUPTED = 130


def run(main: Coroutine[Any, Any, int], interrupted: Callable[[], str | None] | None = None) -> NoReturn:
    """Run a verb's body; exit with its status (0 ok, 1 failed, 2 refused input/settings, 3 timeout,
    4 no such id, 130 Ctrl-C). On Ctrl-C, `interrupted()` says what goes on without us (the job still runs...)."""
    try:
        code = asyncio.run(_interruptible(main))
    except KeyboardInterrupt:
        said = interrupted() if interrupted is not None else None
        click.echo(f"\nllm-router: interrupted{': ' + said if said else ''}", err=True)
        code = INTERRUPTED
    except ConfigError as exc:
        exit_on_config_error(exc)
    except RedisError as exc:  # unreachable, refused password, no such database...: never a traceback
        code = _redis_failed(exc)
    raise SystemExit(code)


# How often Ctrl-C cancels the verb's body again until it ends (see _interruptible).
RECANCEL_S = 0.25


async def _interruptible(main: Coroutine[Any, Any, int]) -> int:
    """`main`, ended by Ctrl-C as KeyboardInterrupt. asyncio's own handler cancels the task once,
    and redis-py can lose that cancel (its check for stale data before a command runs under
    `asyncio.timeout(0)`, which on Python 3.11 turns a cancel landing there into its own
    timeout): the CLI waited on as if nothing had been typed. Here the cancel is repeated until
    the body ends; a second Ctrl-C stops at once."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return await main
    typed = 0

    def cancel() -> None:
        if not task.done():
            task.cancel()
            loop.call_later(RECANCEL_S, cancel)

    def on_sigint() -> None:
        nonlocal typed
        typed += 1
        if typed > 1:
            raise KeyboardInterrupt
        cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError):  # no signal handlers on this loop (Windows): asyncio's own
        return await main
    try:
        return await main
    except asyncio.CancelledError:
        if typed:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


class Verbs(click.Group):
    """A verb with sub-verbs (`dlq`, `batch`...) whose --help lists each by the whole first
    paragraph of its help, wrapped, never cut short at the terminal's width."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class Finite(click.FloatRange):
    """A FloatRange that refuses nan and inf (FloatRange lets both through: nan compares false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# --limit of the list verbs: at least one, at most what a terminal (or a pipe) is given at once
LIST_LIMIT = click.IntRange(1, 100_000)


def _redis_failed(exc: BaseException) -> int:
    """Say what is wrong with Redis (worker.process.preflight) and how to fix it: 2 if a setting must
    change (a password, the scheme), 1 if Redis could not be reached."""
    from .process.preflight import explain

    problem = explain(load_settings().redis_url, exc)
    click.echo(f"llm-router: REDIS_URL: {problem.text}", err=True)
    return 2 if problem.lasting else 1


@click.group()
def cli() -> None:
    """Operator verbs."""


@cli.command()
@click.option(
    "--burst", is_flag=True, help="stop when the queue is empty (and serve no /metrics unless --port or METRICS_PORT)"
)
@click.option("--host", default="0.0.0.0", show_default=True, help="the address /metrics and the probes listen on")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="the port of /metrics and the probes; 0: none  [default: METRICS_PORT, 9464]",
)
def worker(burst: bool, host: str, port: int | None) -> None:
    """Run a worker (settings from the environment)."""
    from .observe.metrics import serve_metrics
    from .process.service import create_worker

    try:
        settings = load_settings()
        logs.setup(settings)
        use_uvloop()
        if port is None and burst and "metrics_port" not in settings.model_fields_set:
            port = 0  # a burst run beside a running worker: the default port is that worker's
        if port is not None:
            settings = settings.model_copy(update={"metrics_port": port})
        worker = create_worker(settings, burst=burst)
        serve_metrics(settings.metrics_port, host)  # a busy port stops the start (exit 2)
        worker.run()
    except ConfigError as exc:
        exit_on_config_error(exc)


def use_uvloop() -> None:
    """Run the worker's event loop on uvloop where it is installed (a dependency off Windows):
    bench.inflight at 1,000 in flight, 2026-12-05, two runs each way: 0.86-0.89 ms of worker CPU
    a job against 0.91-0.95 on asyncio's loop, 302-322 jobs/s against 262-270. (Before
    create_worker: arq's Worker takes the loop of the policy in place when it is built.)"""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="the address /metrics listens on")
@click.option("--port", type=click.IntRange(1, 65535), help="the port of /metrics  [default: EXPORTER_PORT, 9465]")
def exporter(host: str, port: int | None) -> None:
    """Serve the queue-level metrics (credits, queue, dead letters) on EXPORTER_PORT."""
    from .observe.exporter import log, serve
    from .process.preflight import redis_problem

    try:
        settings = load_settings()
        logs.setup(settings)
        problem = redis_problem(settings.redis_url)
        if problem is not None and problem.lasting:
            raise ConfigError(f"REDIS_URL: {problem.text}")
        if problem is not None:
            log.warning("%s; serving llm_router_exporter_redis_up 0 until it answers", problem.text)
        serve(settings, host, port)
    except ConfigError as exc:
        exit_on_config_error(exc)
    except KeyboardInterrupt:
        pass


@cli.group(cls=Verbs)
def dlq() -> None:
    """Dead-lettered jobs: list, show, replay, purge."""


def _on_redis(store: str, body: Any) -> NoReturn:
    """Run `body(store)` with `store` ("dead_letters" or "quarantine") on the configured Redis and queue."""
    from .contract.connections import async_redis
    from .outputs.dlq import DeadLetters
    from .process.quarantine import Quarantine

    async def main() -> int:
        settings = load_settings()
        redis = async_redis(settings.redis_url)
        try:
            if store == "quarantine":
                return await body(Quarantine(redis, settings.queue_name, settings.quarantine_max))
            return await body(DeadLetters(redis, settings.queue_name))
        finally:
            await redis.aclose()

    run(main())


def _dead_letters(body: Any) -> NoReturn:
    _on_redis("dead_letters", body)


@dlq.command("list")
@click.option("--limit", type=LIST_LIMIT, default=50, show_default=True, help="at most this many, newest first")
@click.option(
    "--json", "as_json", is_flag=True, help="print the dead letters as a JSON array (every attempt, the payload)"
)
def dlq_list(limit: int, as_json: bool) -> None:
    """Newest first."""

    async def body(letters: Any) -> int:
        found = await letters.list(limit)
        if as_json:
            click.echo(json.dumps([json.loads(d.model_dump_json(exclude_none=True)) for d in found], indent=2))
            return 0
        for d in found:
            reason = f"{d.error.type}: {d.error.message}" if d.error else "failed"
            click.echo(f"{d.job_id}  {d.kind:<7}  {d.dead_at:%Y-%m-%d %H:%M:%S}  {len(d.attempts)} calls  {reason}")
        if not found:
            click.echo("the dead-letter list is empty")
        return 0

    _dead_letters(body)


@dlq.command("show")
@click.argument("job_id")
def dlq_show(job_id: str) -> None:
    """One dead letter with every attempt."""

    async def body(letters: Any) -> int:
        letter = await letters.get(job_id)
        if letter is None:
            click.echo(f"llm-router: {job_id} is not in the dead-letter list", err=True)
            return NO_SUCH_ID
        click.echo(letter.model_dump_json(indent=2, exclude_none=True))
        return 0

    _dead_letters(body)


@dlq.command("replay")
@click.argument("job_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="every dead letter")
def dlq_replay(job_id: str | None, replay_all: bool) -> None:
    """Put jobs back in the queue under the same id."""
    if bool(job_id) == replay_all:
        raise click.UsageError("give a JOB_ID or --all")

    async def body(letters: Any) -> int:
        if replay_all:
            click.echo(f"replayed {await letters.replay_all()} jobs")
            return 0
        try:
            replayed = await letters.replay(job_id)
        except ValueError as exc:
            click.echo(f"llm-router: {exc}", err=True)
            return 1
        if not replayed:
            click.echo(f"llm-router: {job_id} is not in the dead-letter list", err=True)
            return NO_SUCH_ID
        click.echo(f"replayed {job_id}")
        return 0

    _dead_letters(body)


def yes_option(f: Any) -> Any:
    return click.option("-y", "--yes", is_flag=True, help="do it without asking (needed when stdin is not a terminal)")(
        f
    )


def confirmed(what: str, verb: str, yes: bool) -> bool:
    """Whether to delete `what` (e.g. "3 dead letters of queue q"): --yes, else the answer on a
    terminal; off a terminal (a script, a pipe), no, saying --yes is needed."""
    if yes:
        return True
    if not sys.stdin.isatty():
        click.echo(
            f"llm-router: {verb} deletes {what}: pass --yes to do it (stdin is not a terminal to ask on)", err=True
        )
        return False
    if click.confirm(f"Delete {what}?", default=False, err=True):
        return True
    click.echo("llm-router: nothing was deleted", err=True)
    return False


@dlq.command("purge")
@yes_option
def dlq_purge(yes: bool) -> None:
    """Forget every dead letter (asks first on a terminal; elsewhere needs --yes)."""

    async def body(letters: Any) -> int:
        size = await letters.size()
        if size and not confirmed(f"{size} dead letters", "dlq purge", yes):
            return 2
        click.echo(f"purged {await letters.purge()} dead letters")
        return 0

    _dead_letters(body)


@cli.group(cls=Verbs)
def quarantine() -> None:
    """Queue entries with no usable id (not UTF-8, or outside the job-id charset): list, purge."""


def _quarantine(body: Any) -> NoReturn:
    _on_redis("quarantine", body)


@quarantine.command("list")
@click.option("--limit", type=LIST_LIMIT, default=50, show_default=True, help="at most this many, newest first")
@click.option("--json", "as_json", is_flag=True, help="print the entries as a JSON array")
def quarantine_list(limit: int, as_json: bool) -> None:
    """Newest first, with the reason and the start of the record."""

    async def body(entries: Any) -> int:
        found = await entries.list(limit)
        if as_json:
            click.echo(json.dumps(found, indent=2))
        for e in [] if as_json else found:
            click.echo(f"{e['id']!r}  {e['reason']:<8}  queue {e['queue']}  record {str(e['record'])[:60]!r}")
        if not found and not as_json:
            click.echo("the quarantine is empty")
        return 0

    _quarantine(body)


@quarantine.command("purge")
@yes_option
def quarantine_purge(yes: bool) -> None:
    """Forget every quarantined entry (asks first on a terminal; elsewhere needs --yes)."""

    async def body(entries: Any) -> int:
        size = await entries.size()
        if size and not confirmed(f"{size} quarantined entries", "quarantine purge", yes):
            return 2
        click.echo(f"purged {await entries.purge()} quarantined entries")
        return 0

    _quarantine(body)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the digests, their workers and what differs as JSON")
def fleet(as_json: bool) -> None:
    """The live workers of the queue by config digest, and the settings in which digests differ
    (exit 1 if they do)."""
    from .contract.connections import async_redis
    from .process.fleet import report

    async def main() -> int:
        settings = load_settings()
        redis = async_redis(settings.redis_url)
        try:
            found = await report(redis, settings.queue_name)
        finally:
            await redis.aclose()
        if as_json:
            click.echo(json.dumps(found, indent=2))
        for row in [] if as_json else found:
            differs = f"  differs in {', '.join(row['differs_in'])}" if row["differs_in"] else ""
            click.echo(f"{row['digest']}  {len(row['workers'])} workers ({', '.join(row['workers'])}){differs}")
        if not found and not as_json:
            click.echo(f"no live worker on {settings.queue_name}")
        return 1 if len(found) > 1 else 0

    run(main())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the rows as a JSON array")
def sources(as_json: bool) -> None:
    """Fair share, per source: jobs waiting in its sub-queue, running, how long its front job has
    waited, its weight and quota (the sources with jobs waiting, and those the settings name)."""
    import time

    from .contract.connections import async_redis
    from .limits.fair import report as source_report

    async def main() -> int:
        settings = load_settings()
        redis = async_redis(settings.redis_url)
        try:
            report = await source_report(redis, settings, time.time())
        finally:
            await redis.aclose()
        if as_json:
            click.echo(json.dumps(report, indent=2))
            return 0
        if not settings.fair_share:
            click.echo("FAIR_SHARE is off: jobs wait in one queue (what is below was queued while it was on)")
        for r in report:
            quota = " ".join(f"{k}={v:g}" for k, v in r["quota"].items())
            click.echo(
                f"{r['source']:<24} waiting {r['waiting']:>7}  running {r['running']:>5}  "
                f"oldest {r['oldest_wait_s']:>8.1f}s  weight {r['weight']:g}{'  quota ' + quota if quota else ''}"
            )
        if not report:
            click.echo("no source has jobs waiting")
        return 0

    run(main())
