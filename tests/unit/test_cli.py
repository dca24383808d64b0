"""`llm-router` lists its verbs without importing them (llm_router.cli): the table it lists them
by must be the verbs' own, every verb of every part's `cli` group in it, each under its module."""

from __future__ import annotations

import importlib
import inspect

import click
from click.testing import CliRunner

from llm_router.cli import SECTIONS, VERBS, cli


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


def test_help_lists_every_verb_once_by_section_with_its_whole_summary():
    listed = [verb for verbs in SECTIONS.values() for verb in verbs]
    assert sorted(listed) == sorted(VERBS)
    said = CliRunner().invoke(cli, ["-h"], prog_name="llm-router", terminal_width=60).output
    for title in ("Jobs:", "Batches and schedules:", "Operations:", "Servers:"):
        assert f"\n{title}\n" in said
    assert "..." not in said.split("\n", 1)[1]  # no summary cut short, even 60 columns wide
    flat = "".join(said.split())  # wrapped anywhere, hyphens included
    for verb, (_, summary) in VERBS.items():
        assert verb + "".join(summary.split()) in flat


def test_version_and_short_help():
    from importlib.metadata import version

    out = CliRunner().invoke(cli, ["--version"], prog_name="llm-router")
    assert out.exit_code == 0 and out.output == f"llm-router {version('llm-router')}\n"
    sub = CliRunner().invoke(cli, ["dlq", "-h"], prog_name="llm-router")
    assert sub.exit_code == 0 and "Dead-lettered jobs" in sub.output and "-h, --help" in sub.output


def test_sub_verbs_are_listed_whole_at_any_width():
    for group in ("batch", "dlq", "quarantine", "schedule"):
        said = CliRunner().invoke(cli, [group, "-h"], prog_name="llm-router", terminal_width=60).output
        assert "Commands:" in said and "..." not in said.split("\n", 1)[1], said


def test_a_job_verbs_help_lists_the_common_flags_before_the_openai_parameters():
    common = ("--source", "--fallbacks", "--no-wait", "--timeout", "--json")
    for verb, own in (("chat", "--message"), ("vision", "--image"), ("compare", "--models")):
        said = CliRunner().invoke(cli, [verb, "--help"], prog_name="llm-router").output
        flags = [own, *(f for f in common if verb != "compare" or f != "--fallbacks")]  # compare: no fallbacks
        order = [said.index(f"  {flag} ") for flag in flags]
        assert order == sorted(order), verb
        openai = said.index("OpenAI parameters (passed to the gateway as given):")
        assert order[-1] < openai < said.index("  --temperature ") and said.index("  --max-completion-tokens") > openai
        assert said.index("  --callback-url") < openai


def test_every_flag_of_ours_says_what_it_does():
    """--json everywhere, sim's flags...: every option has help, but OpenAI's pass-through
    parameters (their meaning is OpenAI's; the model gives some a description)."""
    from worker.contract.models import ChatParams

    def undescribed(command, path, parent):
        ctx = click.Context(command, info_name=path[-1], parent=parent)  # no help names: see _short_help
        for param in command.params:
            if isinstance(param, click.Option) and not param.help and param.name not in ChatParams.model_fields:
                yield f"{' '.join(path)} {param.opts[0]}"
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                yield from undescribed(command.get_command(ctx, name), [*path, name], ctx)

    assert list(undescribed(cli, ["llm-router"], None)) == []
    said = CliRunner().invoke(cli, ["sim", "-h"], prog_name="llm-router", terminal_width=200).output
    assert (
        "[default: 8700;" in said
        and "--latency-ms FLOAT" in said
        and "fixed delay before the answer  [default: 0]" in said
    )


def test_metadata_is_key_value_or_json_on_every_verb_that_takes_it():
    import pytest

    from producers.cli import metadata_pairs

    assert metadata_pairs(None, None, ("team=search", '{"run": "7"}', "a=b=c")) == {
        "team": "search",
        "run": "7",
        "a": "b=c",
    }
    assert metadata_pairs(None, None, ()) is None
    for bad in ("oops", "=x", "{not json", "[1]"):
        with pytest.raises(click.BadParameter):
            metadata_pairs(None, None, (bad,))
    ctx = click.Context(cli)
    batch = cli.get_command(ctx, "batch")
    assert isinstance(batch, click.Group)
    for command in (
        *(cli.get_command(ctx, v) for v in ("chat", "vision", "compare")),
        batch.get_command(ctx, "submit"),
    ):
        [option] = [p for p in command.params if p.name == "metadata"]
        assert option.multiple and option.callback is metadata_pairs and option.metavar == "KEY=VALUE|JSON"


def test_wait_is_a_flag_everywhere_and_follow_the_same_flag_on_batches():
    ctx = click.Context(cli)
    batch = cli.get_command(ctx, "batch")
    assert isinstance(batch, click.Group)
    for command in (cli.get_command(ctx, "result"), batch.get_command(ctx, "submit"), batch.get_command(ctx, "status")):
        [wait] = [p for p in command.params if "--wait" in p.opts]
        assert isinstance(wait, click.Option) and wait.is_flag
    for verb in ("submit", "status"):
        [wait] = [p for p in batch.get_command(ctx, verb).params if "--wait" in p.opts]
        assert "--follow" in wait.opts
