"""`llm-router`: the one command (the console script `llm_router.cli:main`). It only gathers
the verbs each part owns (arq's cli.py is the model): producer verbs live next to the producer
API, operator verbs next to the worker, and `sim` next to the simulator.

    producers/cli.py   chat, vision, compare, result, models
    producers/batch_cli.py   batch submit | status | results | cancel | list
    producers/http/app.py  api (the HTTP ingress)
    worker/cli.py      worker, exporter, dlq, quarantine, fleet, sources
    worker/schedule_cli.py   schedule list | run
    worker/spend_cli.py      spend
    sim/cli.py         sim

The verbs' modules are imported lazily, only the one a call runs: together they import
FastAPI, aiohttp, redis, httpx and the models, ~0.7 s, where `llm-router --help` needs none of
them and `llm-router chat` only the producer's. `--help` lists each verb by the first
paragraph of its help, kept here (tests/unit/test_cli.py checks it against the verbs'), in
the sections of SECTIONS.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

# verb -> (the module whose `cli` group holds it, the first paragraph of its help)
VERBS: dict[str, tuple[str, str]] = {
    "chat": ("producers.cli", "One chat completion."),
    "compare": ("producers.cli", "The same question to several models at once."),
    "models": ("producers.cli", "The models the gateway lists."),
    "result": ("producers.cli", "Print a job's result."),
    "vision": ("producers.cli", "Ask about an image (URL or local file)."),
    "batch": (
        "producers.batch_cli",
        "Batches in OpenAI's Batch format (JSONL): submit, status, results, cancel, list.",
    ),
    "api": (
        "producers.http.app",
        "Serve the HTTP ingress (OpenAPI schema at /openapi.json); needs INGRESS_TOKENS and REDIS_URL.",
    ),
    "dlq": ("worker.cli", "Dead-lettered jobs: list, show, replay, purge."),
    "exporter": ("worker.cli", "Serve the queue-level metrics (credits, queue, dead letters) on EXPORTER_PORT."),
    "fleet": (
        "worker.cli",
        "The live workers of the queue by config digest, and the settings in which digests differ\n"
        "(exit 1 if they do).",
    ),
    "quarantine": (
        "worker.cli",
        "Queue entries with no usable id (not UTF-8, or outside the job-id charset): list, purge.",
    ),
    "sources": (
        "worker.cli",
        "Fair share, per source: jobs waiting in its sub-queue, running, how long its front job has\nwaited, its"
        " weight and quota (the sources with jobs waiting, and those the settings name).",
    ),
    "worker": ("worker.cli", "Run a worker (settings from the environment)."),
    "schedule": ("worker.schedule_cli", "Scheduled batches (SCHEDULES_FILE): list, run."),
    "spend": ("worker.spend_cli", "Spend, calls, tokens and cache savings per day, by model, source, batch or route."),
    "sim": ("sim.cli", "Run the local AIsa simulator."),
}


# How `llm-router --help` groups the verbs: every verb of VERBS in one section (tests/unit/test_cli.py).
SECTIONS: dict[str, list[str]] = {
    "Jobs": ["chat", "vision", "compare", "result", "models"],
    "Batches and schedules": ["batch", "schedule"],
    "Operations": ["dlq", "quarantine", "fleet", "sources", "spend"],
    "Servers": ["worker", "api", "exporter", "sim"],
}


class Verbs(click.Group):
    """The verbs of VERBS, each imported from its module when it is called (or its help asked)."""

    listing = False  # while --help lists the verbs: their summaries, nothing imported

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [verb for verbs in SECTIONS.values() for verb in verbs]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in VERBS:
            return None
        module, summary = VERBS[cmd_name]
        if self.listing:
            return click.Command(cmd_name, help=summary)
        group: Any = importlib.import_module(f"llm_router.{module}").cli  # (a checkout's: the same module)
        command: click.Command | None = group.get_command(ctx, cmd_name)
        if command is not None:
            _short_help(command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The verbs by section, each with the whole first paragraph of its help (wrapped, never cut)."""
        for title, verbs in SECTIONS.items():
            with formatter.section(title):
                formatter.write_dl([(verb, " ".join(VERBS[verb][1].split())) for verb in verbs])


HELP_NAMES = ("-h", "--help")


def _short_help(command: click.Command) -> None:
    """`-h` beside `--help` on `command` and its sub-verbs, whatever context asks first. A context
    passes its help names down to its children, but click creates a command's help option once,
    for the first context that asks: a verb first reached under a bare `click.Context(cli)` (the
    docs' generator, a test) would keep a lone `--help` for good."""

    def names(ctx: click.Context, of: click.Command = command) -> list[str]:
        taken = {name for param in of.params for name in (*param.opts, *param.secondary_opts)}
        return [name for name in HELP_NAMES if name not in taken]

    setattr(command, "get_help_option_names", names)  # noqa: B010  (an instance's own, not the class's)
    for sub in getattr(command, "commands", {}).values():
        _short_help(sub)


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        said = version("llm-router")
    except PackageNotFoundError:  # a checkout run without installing it
        said = "unknown (not installed)"
    click.echo(f"llm-router {said}")
    ctx.exit()


cli = Verbs(
    name="llm-router",
    help="Queue-driven LLM calls through the AIsa gateway. A verb enqueues, waits and prints the answer and "
    "its cost; --no-wait prints the job id, --json the whole result record. `llm-router VERB -h` says more.",
    context_settings={"help_option_names": list(HELP_NAMES)},
    params=[
        click.Option(
            ["--version"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_version,
            help="Print the version and exit.",
        )
    ],
)


def main() -> None:
    cli(prog_name="llm-router")


if __name__ == "__main__":
    main()
