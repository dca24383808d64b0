"""`llm-router` lists its verbs without importing them (llm_router.cli): the table it lists them
by must be the verbs' own, every verb of every part's `cli` group in it, each under its module."""

from __future__ import annotations

import importlib
import inspect

import click

from llm_router.cli import VERBS, cli


def parts() -> dict[str, click.Group]:
    return {module: importlib.import_module(f"llm_router.{module}").cli for module, _ in VERBS.values()}


def test_every_verb_of_every_part_is_listed_under_its_module():
    ctx = click.Context(cli)
    found = {name: module for module, group in parts().items() for name in group.list_commands(ctx)}
    assert found == {name: module for name, (module, _) in VERBS.items()}


def test_each_summary_is_the_first_paragraph_of_the_verbs_help():
    ctx = click.Context(cli)
    for name, (_, summary) in VERBS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and not command.hidden and command.short_help is None
        assert inspect.cleandoc(command.help or "").split("\n\n")[0] == summary, name
        for limit in (30, 45, 74, 200):  # as --help shortens it, at any terminal width
            assert click.Command(name, help=summary).get_short_help_str(limit) == command.get_short_help_str(limit)
