"""The batch verbs of `llm-router` (producer verbs, beside the batch API, producers.batches):

    llm-router batch submit FILE [--wait] [-o OUT] [--errors ERR] [--window 24h] [--metadata k=v]... [--skip-invalid]
                            [--callback-url URL]
    llm-router batch submit --prompts prompts.csv --template "Summarise: {text}" --model gpt-4.1-mini
    llm-router batch status ID [--follow]
    llm-router batch results ID [-o OUT] [--errors ERR]
    llm-router batch cancel ID
    llm-router batch list

stdout carries what a script reads (the batch id, results, records with --json); progress goes
to stderr: a live bar (rich) on a terminal, else a plain line every few seconds. Exit status:
0 every line succeeded, 1 a line failed or the batch ended expired or cancelled, 2 refused
input (nothing was enqueued), 4 no such batch, 130 Ctrl-C (the batch keeps running: the
commands to follow, fetch or cancel it are printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

import click

from worker.batches.record import Batch
from worker.cli import NO_SUCH_ID, Verbs, run

from .api import Producer
from .batches import BatchRejected, prompt_lines
from .cli import METADATA_HELP, metadata_pairs

# How often progress is read, and how often a plain (not a terminal) progress line is printed.
POLL_S = 0.5
PLAIN_EVERY_S = 2.0


@click.group()
def cli() -> None:
    """Batch verbs."""


@cli.group(cls=Verbs)
def batch() -> None:
    """Batches in OpenAI's Batch format (JSONL): submit, status, results, cancel, list."""


@batch.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--wait", "--follow", "wait", is_flag=True, help="follow it to the end with a progress bar")
@click.option(
    "-o", "--output", "output", type=click.Path(dir_okay=False), help="write the output JSONL here (implies --wait)"
)
@click.option("--errors", type=click.Path(dir_okay=False), help="write the error JSONL here (implies --wait)")
@click.option("--window", default="24h", show_default=True, help="completion window: 24h, 30m, 2h, 90s...")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE|JSON", callback=metadata_pairs, help=METADATA_HELP)
@click.option("--skip-invalid", is_flag=True, help="enqueue the valid lines, report and skip the others")
@click.option(
    "--budget",
    "budget",
    type=click.FloatRange(min=0),
    callback=lambda _ctx, _param, usd: _finite(usd),
    metavar="USD",
    help="the batch's budget: once spent, the lines left end `budget` unsent (skipped)",
)
@click.option("--prompts", type=click.Path(dir_okay=False), help="a CSV (header row) or text file of prompts")
@click.option("--template", default="{text}", show_default=True, help="--prompts: the prompt, naming CSV columns")
@click.option("--model", help="--prompts: the model of every line")
@click.option("--max-tokens", type=int, help="--prompts: max_tokens of every line")
@click.option("--system", help="--prompts: a system prompt for every line")
@click.option("--callback-url", help="POST the batch's record here, signed, when it ends (WEBHOOK_ALLOWED_HOSTS)")
@click.option("--json", "as_json", is_flag=True, help="print the batch record as JSON")
def submit(
    file: str | None,
    wait: bool,
    output: str | None,
    errors: str | None,
    window: str,
    metadata: dict[str, Any] | None,
    skip_invalid: bool,
    budget: float | None,
    prompts: str | None,
    template: str,
    model: str | None,
    max_tokens: int | None,
    system: str | None,
    callback_url: str | None,
    as_json: bool,
) -> None:
    """Submit a JSONL file of requests (OpenAI's batch input) as one batch."""
    if bool(file) == bool(prompts):
        raise click.UsageError("give a FILE of requests or --prompts FILE")
    if prompts and not model:
        raise click.UsageError("--prompts needs --model")
    meta = metadata

    submitted: list[str] = []

    async def main() -> int:
        source: Any = file
        if prompts:
            params = {"max_tokens": max_tokens} if max_tokens else {}
            try:
                source = prompt_lines(prompts, template, model or "", system=system, **params)
            except OSError as exc:
                return _unreadable("--prompts", exc)
            except ValueError as exc:
                click.echo(f"llm-router: invalid --template: {exc}. Nothing was enqueued.", err=True)
                return 2
        async with Producer() as producer:
            try:
                found = await producer.batches.submit(
                    source,
                    completion_window=window,
                    metadata=meta or None,
                    skip_invalid=skip_invalid,
                    budget_usd=budget,
                    callback_url=callback_url,
                )
            except BatchRejected as exc:
                return _refused(exc)
            except OSError as exc:
                return _unreadable("--prompts" if prompts else "FILE", exc)
            submitted.append(found.id)
            click.echo(found.model_dump_json(indent=2) if as_json and not (wait or output or errors) else found.id)
            for error in (found.errors.data if found.errors else [])[:50]:
                click.echo(
                    f"llm-router: skipped line {error.line} ({error.param or error.code}): {error.message}", err=True
                )
            if not (wait or output or errors):
                return 0
            found = await _follow(producer, found.id)
            return await _finish(producer, found, output, errors, as_json)

    run(main(), lambda: keeps_running(submitted[0], output, errors) if submitted else None)


@batch.command()
@click.argument("batch_id")
@click.option("--wait", "--follow", "follow", is_flag=True, help="follow it to the end with a progress bar")
@click.option("--json", "as_json", is_flag=True, help="print the batch record as JSON")
def status(batch_id: str, follow: bool, as_json: bool) -> None:
    """A batch's status, counts and cost (and, once it ended with failed lines, why they failed)."""

    async def main() -> int:
        async with Producer() as producer:
            found = await producer.batches.get(batch_id)
            if found is None:
                return _unknown(batch_id)
            if follow:
                found = await _follow(producer, batch_id)
            click.echo(found.model_dump_json(indent=2) if as_json else _summary(found))
            if found.final and found.request_counts.failed and not as_json:
                await _why_failed(producer, found, None)
            return _exit(found) if follow or found.final else 0

    run(main(), lambda: keeps_running(batch_id))


@batch.command()
@click.argument("batch_id")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), help="the output JSONL (default: stdout)")
@click.option("--errors", type=click.Path(dir_okay=False), help="the error JSONL (default: with the output if no -o)")
def results(batch_id: str, output: str | None, errors: str | None) -> None:
    """The results in OpenAI's output shape, in input order."""

    async def main() -> int:
        async with Producer() as producer:
            found = await producer.batches.get(batch_id)
            if found is None:
                return _unknown(batch_id)
            if not found.final:
                click.echo(f"llm-router: {batch_id} is {found.status}: only its finished lines so far", err=True)
            return await _write(producer, found, output, errors)

    run(main())


@batch.command()
@click.argument("batch_id")
def cancel(batch_id: str) -> None:
    """Cancel: queued lines are never sent; running ones finish and are counted."""

    async def main() -> int:
        async with Producer() as producer:
            found = await producer.batches.cancel(batch_id)
        if found is None:
            return _unknown(batch_id)
        click.echo(f"{found.id} {found.status}")
        if found.status not in ("cancelling", "cancelled"):
            click.echo(f"llm-router: {found.id} had already ended ({found.status}): nothing to cancel", err=True)
            return 1
        return 0

    run(main())


@batch.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="at most this many batches")
@click.option("--after", help="a batch id: the page after it")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="print the page as JSON, as OpenAI's list (data, first_id, last_id, has_more)",
)
def list_(limit: int, after: str | None, as_json: bool) -> None:
    """Batches, newest first."""

    async def main() -> int:
        async with Producer() as producer:
            found = await producer.batches.list(limit, after)
        if as_json:
            page = {
                "object": "list",
                "data": [b.model_dump(mode="json") for b in found],
                "first_id": found[0].id if found else None,
                "last_id": found[-1].id if found else None,
                "has_more": len(found) == limit,
            }
            click.echo(json.dumps(page, indent=2))
        for b in [] if as_json else found:
            click.echo(_summary(b))
        if not found and not as_json:
            click.echo("no batches")
        return 0

    run(main())


# ---------------------------------------------------------------- helpers


def _finite(usd: float | None) -> float | None:
    if usd is not None and not math.isfinite(usd):
        raise click.BadParameter(f"{usd} is not an amount of USD: give a finite number, 0 or more")
    return usd


# The flag of each option a refusal of the whole batch may name.
OPTION_FLAGS = {
    "completion_window": "--window",
    "metadata": "--metadata",
    "budget_usd": "--budget",
    "callback_url": "--callback-url",
}


def _refused(exc: BatchRejected) -> int:
    first = exc.errors[0]
    if not first.line and first.param in OPTION_FLAGS:  # a flag's value: one line naming the flag
        flag = OPTION_FLAGS[first.param]
        click.echo(f"llm-router: invalid {flag} ({first.param}): {first.message}. Nothing was enqueued.", err=True)
        return 2
    for error in exc.errors:
        where = f"line {error.line}" if error.line else "the batch"
        flag = f"{OPTION_FLAGS[error.param]} " if error.param in OPTION_FLAGS else ""
        click.echo(f"llm-router: {where} ({flag}{error.param or error.code}): {error.message}", err=True)
    bad_lines = sum(1 for error in exc.errors if error.line)
    if not bad_lines or bad_lines < len(exc.errors):  # the batch itself: --skip-invalid cannot help
        click.echo("llm-router: batch refused. Nothing was enqueued: fix what is named above.", err=True)
        return 2
    click.echo(
        f"llm-router: batch refused ({bad_lines} bad of {exc.lines} lines). Nothing was enqueued: "
        "fix them, or pass --skip-invalid to send the others.",
        err=True,
    )
    return 2


def keeps_running(batch_id: str, output: str | None = None, errors: str | None = None) -> str:
    """What Ctrl-C while following a batch leaves behind: the batch, still running, and the
    commands to follow it, fetch its results or cancel it."""
    files = f" -o {output or 'out.jsonl'}" + (f" --errors {errors}" if errors else "")
    return (
        f"batch {batch_id} keeps running without this command.\n"
        f"  follow it:    llm-router batch status {batch_id} --follow\n"
        f"  its results:  llm-router batch results {batch_id}{files}\n"
        f"  cancel it:    llm-router batch cancel {batch_id}"
    )


def _unreadable(what: str, exc: OSError) -> int:
    click.echo(f"llm-router: cannot read {what} {exc.filename}: {exc.strerror}. Nothing was enqueued.", err=True)
    return 2


def _unknown(batch_id: str) -> int:
    click.echo(f"llm-router: no batch {batch_id} (unknown, or purged BATCH_TTL_S after its window)", err=True)
    return NO_SUCH_ID


def _exit(found: Batch) -> int:
    return 0 if found.status == "completed" and not found.request_counts.failed else 1


def _summary(b: Batch) -> str:
    c = b.request_counts
    created = datetime.fromtimestamp(b.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    extra = f" ({c.cancelled} cancelled)" if c.cancelled else f" ({c.expired} expired)" if c.expired else ""
    if c.skipped:  # refused by a budget (worker.limits.budgets), never sent
        extra += f" ({c.skipped} skipped: budget)"
    budget = f"  budget ${b.budget_spent_usd:.6f} of ${b.budget_usd:.6f}" if b.budget_usd is not None else ""
    return (
        f"{b.id}  {b.status:<11}  {b.done}/{c.total} done, {c.failed} failed{extra}  "
        f"${b.cost_usd:.6f}{budget}  {b.usage.total_tokens} tokens  created {created}  window {b.completion_window}"
    )


async def _finish(producer: Producer, found: Batch, output: str | None, errors: str | None, as_json: bool) -> int:
    if output or errors:
        await _write(producer, found, output, errors, summary=False)
    click.echo(found.model_dump_json(indent=2) if as_json else _summary(found))
    if found.request_counts.failed:
        await _why_failed(producer, found, errors)
    return _exit(found)


# How many kinds of error, and lines of each, `batch submit --wait` names when lines failed.
FAILURE_KINDS_SHOWN = 5
FAILED_IDS_SHOWN = 3


async def _why_failed(producer: Producer, found: Batch, errors: str | None) -> None:
    """On stderr: the failed lines grouped by error code (the first few kinds, a few custom ids
    and the first message of each), then where the rest is."""
    kinds: dict[str, list[Any]] = {}  # code -> [count, first message, custom ids]
    seen = 0
    async for line in producer.batches.results(found.id):
        if line["error"] is None:
            continue
        kind = kinds.setdefault(line["error"]["code"], [0, line["error"]["message"], []])
        kind[0] += 1
        if len(kind[2]) < FAILED_IDS_SHOWN:
            kind[2].append(line["custom_id"])
        seen += 1
        if seen >= found.request_counts.failed:
            break
    click.echo(f"llm-router: {found.request_counts.failed} lines failed:", err=True)
    for code, (count, message, ids) in sorted(kinds.items(), key=lambda kv: -kv[1][0])[:FAILURE_KINDS_SHOWN]:
        more = ", ..." if count > len(ids) else ""
        click.echo(f"  {code}: {count} (e.g. {', '.join(ids)}{more}): {message}", err=True)
    where = f"in {errors}" if errors else f"llm-router batch results {found.id} --errors failed.jsonl"
    click.echo(f"llm-router: every failed line with its error: {where}", err=True)


async def _write(producer: Producer, found: Batch, output: str | None, errors: str | None, summary: bool = True) -> int:
    """Output lines to OUT (stdout without -o), error lines to ERR (with the output when neither is given)."""
    with contextlib.ExitStack() as stack:
        out: IO[str] | None = stack.enter_context(open(output, "w")) if output else sys.stdout
        err: IO[str] | None = stack.enter_context(open(errors, "w")) if errors else None
        if err is None and output is None:
            err = sys.stdout  # neither given: every line, in input order
        n_out, n_err = await producer.batches.write_results(found.id, out, err)
    if summary:
        note = "" if errors or output is None or not n_err else " (not written: --errors FILE)"
        click.echo(f"{found.id} {found.status}: {n_out} output lines, {n_err} error lines{note}", err=True)
    return _exit(found)


async def _follow(producer: Producer, batch_id: str) -> Batch:
    """Poll the batch until it ends, showing lines done / failed / total, USD, lines per minute and ETA."""
    found = await producer.batches.get(batch_id)
    assert found is not None
    start, done_at_start = time.monotonic(), found.done
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "{task.fields[failed]} failed · ${task.fields[usd]:.4f} · {task.fields[lpm]:.0f} lines/min · ETA"
            ),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task(
                found.status, total=found.request_counts.total, completed=found.done, failed=0, usd=0.0, lpm=0.0
            )
            while True:
                lpm, _eta = _rate(found, start, done_at_start)
                bar.update(
                    task,
                    description=found.status,
                    completed=found.done,
                    failed=found.request_counts.failed,
                    usd=found.cost_usd,
                    lpm=lpm,
                )
                if found.final:
                    return found
                await asyncio.sleep(POLL_S)
                found = await producer.batches.get(batch_id) or found
    last = 0.0
    while True:
        now = time.monotonic()
        if found.final or now - last >= PLAIN_EVERY_S:
            last = now
            lpm, eta = _rate(found, start, done_at_start)
            c = found.request_counts
            click.echo(
                f"{found.id} {found.status}: {found.done}/{c.total} done, {c.failed} failed · ${found.cost_usd:.4f}"
                f" · {lpm:.0f} lines/min · ETA {eta}",
                err=True,
            )
        if found.final:
            return found
        await asyncio.sleep(POLL_S)
        found = await producer.batches.get(batch_id) or found


def _rate(found: Batch, start: float, done_at_start: int) -> tuple[float, str]:
    elapsed = max(time.monotonic() - start, 1e-6)
    lpm = (found.done - done_at_start) / elapsed * 60
    left = found.request_counts.total - found.done
    if found.final or not left:
        return lpm, "0s"
    if lpm <= 0:
        return lpm, "?"
    seconds = int(left / lpm * 60)
    return lpm, f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
