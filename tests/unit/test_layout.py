"""The layout is what the docs say (docs/development.md): every path of "Where things live" exists, every package
folder is in its tree, every test file is in the folder of its kind (.ci/restructure.py), every
module in its package (.ci/packages.py), and in
a checkout a module has one object under its two names (`worker.x`, `llm_router.worker.x`)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "development.md"
SECTION = re.search(r"^## Where things live\n(.*?)(?=^## |\Z)", PAGE.read_text(), re.M | re.S)
assert SECTION, "docs/development.md has no section 'Where things live'"
TEXT = SECTION[1]
NOT_OURS = {".venv", "build", "node_modules", ".git"}


def tree() -> list[str]:
    """The paths of the section's tree block: two spaces of indent per level, the name first."""
    block = re.search(r"^```\n(.*?)^```", TEXT, re.M | re.S)
    assert block, "the section has no tree block"
    paths: list[str] = []
    parents: list[str] = []
    for line in block[1].splitlines():
        depth, name = (len(line) - len(line.lstrip())) // 2, line.split()[0]
        parents = [*parents[:depth], name]
        paths.append("".join(parents))
    return paths


def test_every_path_of_the_tree_exists():
    missing = [p for p in tree() if not (ROOT / p).exists() or (p.endswith("/") and not (ROOT / p).is_dir())]
    assert not missing, f"docs/development.md's tree names what is not there: {missing}"


def test_every_package_folder_is_in_the_tree():
    packages = {
        init.parent.relative_to(ROOT).as_posix() + "/"
        for init in ROOT.rglob("__init__.py")
        if not NOT_OURS & set(init.relative_to(ROOT).parts)
    }
    assert packages - set(tree()) == set(), (
        "package folders missing from docs/development.md's tree (Where things live)"
    )


def test_every_module_of_the_table_exists():
    """A row's paths are the root's or its first path's folder's: `worker/calls/client.py`, then `errors.py`."""
    missing = []
    for row in (line for line in TEXT.splitlines() if line.startswith("| `")):
        names = re.findall(r"`([\w./-]+(?:\.py|/))`", row)
        folder = ROOT / names[0] if names and names[0].endswith("/") else (ROOT / names[0]).parent if names else ROOT
        missing += [f"{n} ({row[:40]}…)" for n in names if not ((folder / n).exists() or (ROOT / n).exists())]
    assert not missing, f"docs/development.md's table names what is not there: {missing}"


def test_every_test_file_is_in_the_folder_of_its_kind():
    spec = importlib.util.spec_from_file_location("restructure", ROOT / ".ci" / "restructure.py")
    assert spec and spec.loader
    restructure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(restructure)
    moves, unplaced = restructure.plan()
    assert not unplaced, f"test files with no row in .ci/restructure.py's PLACE: {unplaced} (add one)"
    assert not moves, f"misplaced: {moves} (run python3 .ci/restructure.py)"


def test_every_module_is_in_its_package():
    """.ci/packages.py's LAYOUT names every module of worker/ and producers/, each is where it says,
    and each sub-package's `__all__` names its modules."""
    spec = importlib.util.spec_from_file_location("packages", ROOT / ".ci" / "packages.py")
    assert spec and spec.loader
    packages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(packages)
    assert not packages.unplaced(), "modules with no row in .ci/packages.py's LAYOUT (add one)"
    assert not packages.pending(), "at an old path: run python3 .ci/packages.py"
    for part, subs in packages.LAYOUT.items():
        for sub, (_, modules) in subs.items():
            if sub:
                init = importlib.import_module(f"{part}.{sub}")
                assert sorted(init.__all__) == sorted(modules), f"{part}.{sub}.__all__"
                on_disk = {p.stem for p in (ROOT / part / sub).glob("*.py")} - {"__init__"}
                assert on_disk == set(modules), f"{part}/{sub}/ holds {sorted(on_disk - set(modules))} too"


def test_a_module_has_one_object_under_both_names():
    import producers.api
    import worker.contract.settings

    assert importlib.import_module("llm_router.worker.contract.settings") is worker.contract.settings
    assert importlib.import_module("llm_router.producers") is sys.modules["producers"]
    from llm_router.producers import Producer

    assert Producer is producers.api.Producer
    twice = [
        name
        for name, module in list(sys.modules.items())
        if name.startswith("llm_router.")
        and sys.modules.get(name.partition(".")[2]) is not module
        and name.partition(".")[2].partition(".")[0] in ("worker", "producers", "sim")
    ]
    assert not twice, f"loaded under two names as two objects: {twice}"
