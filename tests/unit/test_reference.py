"""The interface cannot change unnoticed: the `llm-router --help` tree and `/openapi.json` are
rendered and compared with the reference files committed under tests/reference/. A change made on
purpose regenerates them (`python -m tests.reference.regen`) in the same commit."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from tests.reference import regen


@pytest.mark.parametrize(
    ("reference", "render"), [(regen.CLI_HELP, regen.cli_help), (regen.OPENAPI, regen.openapi)], ids=["cli", "openapi"]
)
def test_the_interface_is_the_reference(reference: Path, render) -> None:
    now, committed = render(), reference.read_text()
    diff = "".join(difflib.unified_diff(committed.splitlines(True), now.splitlines(True), "committed", "now", n=2))
    assert now == committed, (
        f"{reference.name} differs from the interface (- committed, + now). If the change is on purpose, "
        f"run `{regen.REGEN}` and commit the file with it:\n{diff[:6000]}"
    )
