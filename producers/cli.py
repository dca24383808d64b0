"""The producer verbs of `llm-router`: chat, vision and compare (enqueue, wait, print the answer
and its cost), result and models. `--no-wait` prints the job id; `--json` the whole record.

A verb's job flags are derived from its job model (worker.contract.models): a parameter added to the
contract is a flag here with no change to this file.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import click
from pydantic.fields import FieldInfo

from worker.cli import NO_SUCH_ID, Finite, run
from worker.contract.models import (
    JOB_KINDS,
    Answer,
    ChatJob,
    ChatParams,
    Choice,
    CompareJob,
    JobBase,
    JobResult,
    VisionJob,
)

from .api import JobRejected, Producer, ResultTimeout

# Fields a verb takes by hand (they have a meaning of their own on the command line).
_BY_HAND = {"kind", "enqueued_at", "model", "models", "messages", "image", "prompt", "system"}
# Seconds of waiting after which the CLI checks that some worker consumes the queue.
NO_WORKER_CHECK_S = 3.0
# How long a verb waits for a result unless --timeout says (chat ..., result --wait).
WAIT_S = 120


class _Json(click.ParamType):
    """A JSON value; with `text_ok`, a plain word (e.g. `--tool-choice auto`) passes as a string."""

    name = "json"

    def __init__(self, text_ok: bool = False) -> None:
        self.text_ok = text_ok

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError as exc:
            if self.text_ok:
                return value
            self.fail(f"not valid JSON ({exc})", param, ctx)


METADATA_HELP = "key=value (repeatable), or a JSON object of them; at most 16 string pairs"


def metadata_pairs(_ctx: Any, _param: Any, values: tuple[str, ...]) -> dict[str, Any] | None:
    """--metadata of every verb: `key=value` (repeatable), or a JSON object, or both, merged in order."""
    found: dict[str, Any] = {}
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                pairs = json.loads(value)
            except ValueError as exc:
                raise click.BadParameter(f"{value!r} is not a JSON object ({exc})", param_hint="--metadata") from None
            if not isinstance(pairs, dict):
                raise click.BadParameter(f"{value!r} is not a JSON object", param_hint="--metadata")
            found.update(pairs)
            continue
        key, sep, said = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is neither key=value nor a JSON object", param_hint="--metadata")
        found[key] = said
    return found or None


def flag(name: str, field: FieldInfo | None = None) -> str:
    """The command-line spelling of a job field, so errors name the flag the user typed."""
    if name == "messages":
        return "--messages/--message"
    extra = field.json_schema_extra if field is not None and isinstance(field.json_schema_extra, dict) else {}
    return str(extra.get("cli_flag") or "--" + name.replace("_", "-"))


def _option(name: str, field: FieldInfo) -> Callable[[Any], Any]:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    kinds = [_bare(a) for a in typing.get_args(field.annotation) or (field.annotation,) if a is not type(None)]
    options: dict[str, Any] = {"help": field.description, "default": None}
    if name == "metadata":  # one form for every verb: key=value or JSON (see metadata_pairs)
        return click.option(
            "--metadata", name, multiple=True, metavar="KEY=VALUE|JSON", callback=metadata_pairs, help=METADATA_HELP
        )
    if kinds == [bool] and field.default is None:
        # unset by default: --x sends true, --no-x sends false, neither sends nothing
        name_flag = flag(name, field)
        return click.option(f"{name_flag}/--no-{name_flag[2:]}", name, **options)
    if kinds == [bool]:
        options.update(is_flag=True, flag_value=True)
    elif extra.get("cli_split"):
        options["callback"] = lambda _ctx, _param, v: (
            None if v is None else [m.strip() for m in v.split(",") if m.strip()]
        )
    elif len(kinds) == 1 and kinds[0] in (int, float, str):
        options["type"] = kinds[0]
    elif len(kinds) == 1 and typing.get_origin(kinds[0]) is Literal:
        options["type"] = click.Choice(typing.get_args(kinds[0]))
    elif str in kinds and any(typing.get_origin(k) is list and typing.get_args(k) == (str,) for k in kinds):
        options.update(multiple=True, callback=lambda _ctx, _param, v: list(v) or None)
    else:
        options["type"] = _Json(text_ok=str in kinds)
    return click.option(flag(name, field), name, **options)


def _bare(annotation: Any) -> Any:
    """`Annotated[int, Strict()]` -> `int`."""
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def job_options(cls: type[JobBase]) -> Callable[[Any], Any]:
    """Every field of the job model not taken by hand, as a flag."""

    def decorate(f: Any) -> Any:
        for name, field in reversed(list(cls.model_fields.items())):
            if name not in _BY_HAND:
                f = _option(name, field)(f)
        return f

    return decorate


def wait_options(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="print the whole result record as JSON")(f)
    f = click.option(
        "--timeout", type=Finite(min=0), default=WAIT_S, show_default=True, help="seconds to wait for the result"
    )(f)
    f = click.option("--no-wait", is_flag=True, help="print the job id and return")(f)
    return click.option("--job-id", help="your own id: enqueuing the same id twice runs the job once")(f)


def conversation_options(f: Any) -> Any:
    f = click.option("--system", help="system prompt")(f)
    f = click.option("--messages", type=_Json(), help="the whole conversation as a JSON array")(f)
    return click.option("--message", help="the user message")(f)


# A job verb's --help: its own flags, then the flags most calls use, then the rest of ours.
OWN = ("model", "models", "image", "prompt", "message", "messages", "system")
COMMON = ("source", "fallbacks", "no_wait", "timeout", "as_json", "job_id")


class JobVerb(click.Command):
    """A job verb (chat, vision, compare): its --help lists its own flags and the common ones
    first, then the pass-through parameters of OpenAI's chat completions apart."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        passed = set(ChatParams.model_fields)
        own: list[tuple[int, int, tuple[str, str]]] = []
        openai: list[tuple[str, str]] = []
        for i, param in enumerate(self.get_params(ctx)):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.name in passed:
                openai.append(record)
            elif param.name in OWN:
                own.append((0, OWN.index(param.name), record))
            elif param.name in COMMON:
                own.append((1, COMMON.index(param.name), record))
            else:
                own.append((2, i, record))
        with formatter.section("Options"):
            formatter.write_dl([record for *_, record in sorted(own)])
        if openai:
            with formatter.section("OpenAI parameters (passed to the gateway as given)"):
                formatter.write_dl(openai)


@click.group()
def cli() -> None:
    """Producer verbs."""


# How a verb hands its job to the producer: (producer, job id or None, the job flags set) -> job id.
Submit = Callable[[Producer, str | None, dict[str, Any]], Awaitable[str]]


@cli.command(cls=JobVerb)
@click.option("--model", required=True, help="a model, or a route: route:cheap, route:code, ... (see ROUTES)")
@conversation_options
@job_options(ChatJob)
@wait_options
def chat(model: str, message: str | None, messages: Any, system: str | None, **flags: Any) -> None:
    """One chat completion."""
    _enqueue(
        lambda p, job_id, params: p.chat(model, message, messages=messages, system=system, job_id=job_id, **params),
        flags,
    )


@cli.command(cls=JobVerb)
@click.option("--model", required=True, help="a model, or a route: route:vision, ... (see ROUTES)")
@click.option("--image", required=True, help="http(s) URL, data URL or local file")
@click.option("--prompt", required=True, help="the question about the image")
@click.option("--system", help="system prompt")
@job_options(VisionJob)
@wait_options
def vision(model: str, image: str, prompt: str, system: str | None, **flags: Any) -> None:
    """Ask about an image (URL or local file)."""
    _enqueue(lambda p, job_id, params: p.vision(model, image, prompt, system=system, job_id=job_id, **params), flags)


@cli.command(cls=JobVerb)
@click.option("--models", required=True, help="comma-separated, e.g. gpt-4.1,claude-3-sonnet")
@conversation_options
@job_options(CompareJob)
@wait_options
def compare(models: str, message: str | None, messages: Any, system: str | None, **flags: Any) -> None:
    """The same question to several models at once."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    _enqueue(
        lambda p, job_id, params: p.compare(names, message, messages=messages, system=system, job_id=job_id, **params),
        flags,
    )


class WaitFlag(click.Command):
    """A verb whose `--wait` is a flag, bounded by `--timeout S`, where it once took the seconds:
    `--wait 30` (and `--wait=30`) still works, read as `--wait --timeout 30`, with a note."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        new: list[str] = []
        rest = list(args)
        while rest:
            arg = rest.pop(0)
            seconds = arg.partition("=")[2] if arg.startswith("--wait=") else None
            if arg == "--wait" and rest and _number(rest[0]):
                seconds = rest.pop(0)
            if seconds is None or arg == "--":
                new.append(arg)
                if arg == "--":
                    new += rest
                    break
                continue
            click.echo(
                f"llm-router: --wait {seconds} is read as --wait --timeout {seconds} (--wait is a flag now; "
                "the old form keeps working)",
                err=True,
            )
            new += ["--wait", "--timeout", seconds]
        return super().parse_args(ctx, new)


def _number(word: str) -> bool:
    """Seconds, not a job id (ids are longer: a 32-digit hex id can parse as a number)."""
    if len(word) > 12:
        return False
    try:
        float(word)
    except ValueError:
        return False
    return True


@cli.command(cls=WaitFlag)
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="wait for it to end (up to --timeout)")
@click.option(
    "--timeout",
    type=Finite(min=0),
    help=f"seconds --wait waits for it (giving it implies --wait)  [default: {WAIT_S:g}]",
)
@click.option("--json", "as_json", is_flag=True, help="print the whole result record as JSON")
def result(job_id: str, wait: bool, timeout: float | None, as_json: bool) -> None:
    """Print a job's result."""

    async def main() -> int:
        async with Producer() as producer:
            if wait or timeout is not None:
                return await _wait_and_print(producer, job_id, WAIT_S if timeout is None else timeout, as_json)
            found = await producer.result(job_id)
            if found is None:
                return await _no_result(producer, job_id)
        return _print(found, as_json)

    run(main(), lambda: f"stopped waiting; job {job_id} still runs if it was queued")


@cli.command()
def models() -> None:
    """The models the gateway lists."""
    from worker.calls.client import AIsaClient
    from worker.calls.errors import AIsaError
    from worker.contract.settings import load_settings

    async def main() -> int:
        settings = load_settings()
        async with AIsaClient(settings.aisa_base_url, settings.api_key()) as client:
            try:
                names = await client.models()
            except AIsaError as exc:
                click.echo(f"llm-router: the gateway did not list its models: {exc}", err=True)
                return 1
        click.echo("\n".join(names))
        return 0

    run(main())


def _enqueue(submit: Submit, flags: dict[str, Any]) -> None:
    """Enqueue with the job flags that were given; then print the id, or wait and print the result."""
    job_id, no_wait, timeout, as_json = (flags.pop(k) for k in ("job_id", "no_wait", "timeout", "as_json"))
    params = {k: v for k, v in flags.items() if v is not None}
    enqueued: list[str] = []

    async def main() -> int:
        async with Producer() as producer:
            try:
                job_id_ = await submit(producer, job_id, params)
            except JobRejected as exc:
                click.echo(
                    f"llm-router: invalid {_flag_of(exc.field)} ({exc.field}): {exc.message}. Nothing was enqueued.",
                    err=True,
                )
                return 2
            enqueued.append(job_id_)
            if no_wait:
                click.echo(job_id_)
                return 0
            return await _wait_and_print(producer, job_id_, timeout, as_json)

    run(main(), lambda: still_runs(enqueued[0]) if enqueued else None)


def still_runs(job_id: str) -> str:
    """What Ctrl-C while waiting for a job leaves behind: the job, still running, and where its result will be."""
    return (
        f"job {job_id} was enqueued and still runs (a job cannot be called back once enqueued); "
        f"its result: llm-router result {job_id} --wait"
    )


def _flag_of(field_path: str) -> str:
    name = field_path.split(".")[0]
    fields = {n: f for cls in JOB_KINDS.values() for n, f in cls.model_fields.items()}
    return flag(name, fields.get(name)) if name in fields or name == "messages" else field_path


async def _pending(producer: Producer, job_id: str) -> str | None:
    """`running` (a worker holds it), `queued`, or None (no such job, or no longer)."""
    from worker.contract.keys import in_progress_key, job_key

    if await producer.redis.exists(in_progress_key(job_id)):
        return "running"
    return "queued" if await producer.redis.exists(job_key(job_id)) else None


async def _no_result(producer: Producer, job_id: str) -> int:
    """No result for `job_id`: 3 if it is queued or running (not yet), else NO_SUCH_ID."""
    state = await _pending(producer, job_id)
    if state is None:
        click.echo(f"llm-router: no job {job_id} (unknown, or its result expired after RESULT_TTL_S)", err=True)
        return NO_SUCH_ID
    click.echo(f"llm-router: job {job_id} is {state}: no result yet (llm-router result {job_id} --wait)", err=True)
    return 3


async def _wait_and_print(producer: Producer, job_id: str, timeout: float, as_json: bool) -> int:
    """Wait for the result; after a few seconds, say so if no worker consumes the queue."""
    first = min(timeout, NO_WORKER_CHECK_S)
    try:
        found = await producer.wait(job_id, first)
    except ResultTimeout:
        if timeout > first and not await producer.workers():
            click.echo(
                f"llm-router: no worker is consuming queue {producer.queue_name!r}: start one with "
                "`llm-router worker` (still waiting)",
                err=True,
            )
        try:
            found = await producer.wait(job_id, timeout - first)
        except ResultTimeout:
            if not await _pending(producer, job_id):
                click.echo(f"llm-router: no job {job_id} (unknown, or its result expired after RESULT_TTL_S)", err=True)
                return NO_SUCH_ID
            click.echo(
                f"llm-router: no result for job {job_id} within {timeout:g}s (it may still finish); "
                f"fetch it later with: llm-router result {job_id}",
                err=True,
            )
            return 3
    return _print(found, as_json)


def _print(result: JobResult, as_json: bool) -> int:
    if as_json:
        click.echo(result.model_dump_json(indent=2, exclude_none=True))
    elif result.answers is not None:
        for answer in result.answers:
            click.echo(f"== {answer.model} ==")
            click.echo(answer.content if answer.error is None else f"failed: {answer.error.message}")
            click.echo(_cost_line(answer))
        click.echo(f"total {_money(result.cost)}")
    elif result.status == "succeeded":
        if result.choices is not None and len(result.choices) > 1:
            for choice in result.choices:
                click.echo(f"== choice {choice.index} ==")
                click.echo(_said(choice))
        else:
            click.echo(_said(result))
        click.echo(_cost_line(result, result.model))
    if result.error:
        click.echo(f"llm-router: job {result.job_id} failed: {result.error.type}: {result.error.message}", err=True)
    return 0 if result.status == "succeeded" else 1


def _said(answer: Answer | Choice) -> str:
    """The text of an answer, or its tool calls as JSON."""
    return answer.content if answer.content is not None else json.dumps(answer.tool_calls or answer.function_call)


def _cost_line(answer: Answer, model: str | None = None) -> str:
    parts = [model] if model else []
    if answer.usage:
        parts.append(f"{answer.usage.total_tokens} tokens")
    parts.append(_money(answer.cost))
    if answer.latency_s is not None:
        parts.append(f"{answer.latency_s:.3f}s")
    if answer.ttft_s is not None:
        parts.append(f"first token {answer.ttft_s:.3f}s")
    return "-- " + " · ".join(parts)


def _money(cost: float | None) -> str:
    return "cost unknown" if cost is None else f"${cost:.6f}"
