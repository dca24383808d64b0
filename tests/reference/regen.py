"""The interface as reference files: the whole `llm-router --help` tree and the ingress's `/openapi.json`.

`tests/unit/test_reference.py` renders both and compares them with the committed files, so a change
to a verb, flag, help text, HTTP path or schema cannot pass unnoticed. A change made on purpose
regenerates them in the same commit:

    python -m tests.reference.regen
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent
CLI_HELP = HERE / "cli-help.txt"
OPENAPI = HERE / "openapi.json"
REGEN = "python -m tests.reference.regen"
WIDTH = 100  # help is wrapped to the terminal's width: a fixed one, so the file does not depend on it


@contextlib.contextmanager
def no_settings_from_env() -> Iterator[None]:
    """Render as a fresh install would: no setting taken from this process's environment or a .env file."""
    from worker.contract.settings import Settings

    names = {name.upper() for name in Settings.model_fields}
    saved = {k: v for k, v in os.environ.items() if k.upper() in names}
    for k in saved:
        del os.environ[k]
    cwd = Path.cwd()
    os.chdir(HERE)  # Settings reads `.env` from the working directory: there is none here
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.update(saved)


def _help_tree(command: click.Command, path: list[str], parent: click.Context | None) -> Iterator[str]:
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = click.Context(command, info_name=path[-1], parent=parent, **settings)
    yield f"=== {' '.join(path)} ===\n{command.get_help(ctx)}\n"
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _help_tree(sub, [*path, name], ctx)


def cli_help() -> str:
    """Every verb's and sub-verb's `--help`, depth first in the order `llm-router --help` lists them."""
    from llm_router.cli import cli

    with no_settings_from_env():
        return "\n".join(_help_tree(cli, ["llm-router"], None))


def openapi() -> str:
    """What the ingress serves at `/openapi.json` (its schema does not depend on the tokens)."""
    from producers.http.app import create_app
    from worker.contract.settings import Settings

    with no_settings_from_env():
        schema = create_app(Settings(ingress_tokens={"reference-token": "reference"}, _env_file=None)).openapi()
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    CLI_HELP.write_text(cli_help())
    OPENAPI.write_text(openapi())
    print(f"wrote {CLI_HELP} and {OPENAPI}")


if __name__ == "__main__":
    main()
