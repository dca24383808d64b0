"""The README and the docs site cannot drift from the code: the site builds strictly (a broken
link or anchor fails) with its reference tables generated from the code, the Redis key table is
the key module, every `llm-router ...` line is accepted by the real CLI, and every example marked
runnable runs against the simulator and prints the answer it shows.

Runnable examples: a fenced `bash`, `python` or `py` block right after a line `<!-- run -->`.
A bash block runs under `bash -eo pipefail`, a Python block with this interpreter, each in a
fresh folder with a private Redis, the simulator and a worker (`llm-router` on PATH, REDIS_URL,
AISA_BASE_URL and AISA_API_KEY set); a block naming `localhost:8080` also gets the HTTP ingress
(`INGRESS_TOKENS` of s3cret-billing and s3cret-search, the port put in its place). Each
`# => TEXT` in the block (a line of its own or the end of one) is TEXT the output must show."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from harness.processes import WorkerProcess
from llm_router.cli import cli
from tests import ingress
from worker.calls.errors import ERROR_CLASSES
from worker.contract import keys
from worker.contract.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^(<!-- run -->\n)?```([a-z]*)\n(.*?)^```", re.M | re.S)
RUNNABLE = {"bash", "python", "py"}
EXPECTED = re.compile(r"# => (.*)$", re.M)
INGRESS_TOKENS = {"s3cret-billing": "billing", "s3cret-search": "search"}


def blocks(path: Path) -> list[tuple[str, str, bool]]:
    """(language, code, marked runnable) of every fenced block of a page."""
    return [(m[2], m[3], bool(m[1])) for m in BLOCK.finditer(path.read_text())]


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr  # a broken link or anchor, a bad table
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text()


def test_settings_page_is_every_setting_with_its_description(site):
    html = page(site, "settings")
    for field_name, field in Settings.model_fields.items():
        assert f"<code>{field_name.upper()}</code>" in html, field_name
        assert field.description, f"{field_name}: the settings page is built from the description"


def test_metrics_page_is_every_metric(site):
    from docs.gen.reference import exporter_metrics, worker_metrics

    html = page(site, "observability")
    metrics = worker_metrics() + exporter_metrics()
    assert len(metrics) > 40
    for metric, *_ in metrics:
        assert f"<code>{metric}</code>" in html, metric
    # the exporter's gauges are every family it names
    exporter = set(re.findall(r'"(llm_router_[a-z_]+)"', (ROOT / "worker" / "observe" / "exporter.py").read_text()))
    assert exporter <= {m for m, *_ in exporter_metrics()}


def test_error_page_is_every_error_class_with_what_it_does(site):
    from docs.gen.reference import error_rows

    html = page(site, "resilience")
    rows = list(error_rows())
    assert [r[0] for r in rows] == list(ERROR_CLASSES)
    for error_class, when, _status, does in rows:
        assert f"<code>{error_class}</code>" in html and when and does, error_class


def test_cli_reference_is_every_verb(site):
    html = page(site, "cli-reference")

    def verbs(command: click.Command, prefix: str) -> list[str]:
        found = [prefix]
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                found += verbs(sub, f"{prefix} {sub_name}")
        return found

    for verb in verbs(cli, "llm-router"):
        assert f"{verb} [OPTIONS]" in html, verb


def test_readme_links_reach_pages():
    """The README is the front page: each of its links into the repository names a file that exists
    (a link to a docs page's heading names one the built page has)."""
    links = re.findall(r"\]\(([^)#\s]+)(#[^)\s]+)?\)", (ROOT / "README.md").read_text())
    local = [(target, anchor) for target, anchor in links if "://" not in target]
    assert len(local) >= 10
    for target, anchor in local:
        assert (ROOT / target).exists(), target
        if anchor:
            assert f'id="{anchor[1:]}"' in (ROOT / target).read_text() or anchor[1:] in (ROOT / target).read_text()


# ---------------------------------------------------------------- tables checked against the code


def table(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in `text`, header and rule left out."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_key_table_is_every_key():
    documented = {
        re.sub(r"<[^>]+>", "<>", k)
        for row in table((ROOT / "docs" / "redis-keys.md").read_text())
        for k in re.findall(r"`([^`]+)`", row[0])
    }
    in_code = set()
    for key_name, value in vars(keys).items():
        if key_name.isupper() and isinstance(value, str) and key_name != "PREFIX":
            in_code.add(value + "<>" if key_name.endswith("_PREFIX") else value)
    assert documented == in_code


# ---------------------------------------------------------------- examples


def cli_lines() -> list[list[str]]:
    lines = []
    for path in PAGES:
        for language, code, _ in blocks(path):
            if language != "bash":
                continue
            for line in code.splitlines():
                line = re.split(r"  #| \| | > ", line)[0].strip().removesuffix(" &")
                if line.startswith("llm-router "):
                    lines.append(shlex.split(line)[1:])
    return lines


@pytest.mark.parametrize("args", cli_lines(), ids=" ".join)
def test_cli_lines_parse(args):
    """Every `llm-router ...` line of the README and the docs is accepted by the real command."""
    command: click.Command = cli
    ctx, rest = click.Context(cli, info_name="llm-router"), list(args)
    while isinstance(command, click.Group):
        verb, *rest = rest
        found = command.get_command(ctx, verb)
        assert found is not None, f"llm-router has no verb {verb!r}"
        command = found
        ctx = click.Context(command, info_name=verb, parent=ctx)
    command.make_context(ctx.info_name, rest, parent=ctx.parent)  # raises on an unknown flag or a bad value


def runnable() -> list[Any]:
    found = []
    for path in PAGES:
        numbered = [b for b in blocks(path) if b[2]]
        for i, (language, code, _) in enumerate(numbered):
            found.append(pytest.param(language, code, id=f"{name(path)}#{i + 1}"))
    return found


def test_runnable_examples_are_marked_on_languages_we_run():
    examples = runnable()
    assert len(examples) >= 10
    for path in PAGES:
        for language, code, marked in blocks(path):
            assert not marked or language in RUNNABLE, f"{name(path)}: {language} block marked runnable"
            assert marked or not EXPECTED.search(code), f"{name(path)}: a block shows `# =>` but is not marked runnable"


@pytest.mark.parametrize(("language", "code"), runnable())
def test_runnable_example(language, code, settings, sim, tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "REDIS_URL": settings.redis_url,
        "QUEUE_NAME": settings.queue_name,
        "AISA_BASE_URL": settings.aisa_base_url,
        "AISA_API_KEY": settings.api_key(),
        "METRICS_PORT": "0",
    }
    command = ["bash", "-eo", "pipefail", "-c"] if language == "bash" else [sys.executable, "-c"]
    if "localhost:8080" in code:
        served = settings.model_copy(update={"ingress_tokens": INGRESS_TOKENS})
        with ingress.running(served, tmp_path) as url:
            out = subprocess.run(
                [*command, code.replace("http://localhost:8080", url).replace("localhost:8080", url)],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
            )
    else:
        worker = WorkerProcess(settings, tmp_path / "worker.log")
        try:
            out = subprocess.run([*command, code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        finally:
            worker.stop()
    shown = out.stdout + out.stderr
    assert out.returncode == 0, code + shown
    for expected in EXPECTED.findall(code):
        assert expected.strip() in shown, f"{expected!r} not in the output:\n{shown}"
