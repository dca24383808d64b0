#!/usr/bin/env python3
"""Move the modules of worker/ and producers/ into their sub-packages (issue 19), and rewrite every
name of a moved module anywhere in the tree; re-runnable, idempotent.

    python3 .ci/packages.py           # move what is at an old path (git mv), rewrite, then say what changed
    python3 .ci/packages.py --check   # change nothing; exit 1 naming what is still at an old path or unplaced

LAYOUT is the tree: each sub-package, what it holds, and its modules, each with the flat path it
came from. A run

1. `git mv`s every module (and the console's assets) still at its old path, and writes each
   sub-package's `__init__.py` (its docstring, `__all__` naming its modules) if there is none;
2. rewrites the old names everywhere in the tree (git's files: .py, docs, README, Procfile,
   deploy/, Makefile, pyproject, setup.py, mkdocs.yml, tests, harness, bench): imports,
   absolute and relative (`from . import batches as wb` in worker/batches/store.py is
   `from . import record as wb`), dotted names in strings, comments and docs (`worker.models`
   -> `worker.contract.models`, `"producers.http"` -> `"producers.http.app"`), paths
   (`worker/models.py` -> `worker/contract/models.py`, `"worker" / "exporter.py"` in code; a
   docs table row's short names follow their folder), and the console's assets;
3. writes the worker/ and producers/ lines of docs/development.md's tree ("Where things live")
   from LAYOUT;
4. formats what it rewrote (ruff, if the checkout's venv has it).

A name already new is left alone (`worker.batches.record`, though `worker.batches` was a module:
a name is new when it names a new module at least as deep as the old module it starts with), so a
second run changes nothing, and a run on a later main moves and rewrites only what that main
added at the old places. A module at the top of worker/ or producers/ that LAYOUT does not name
is refused (exit 1): give it a row.
"""

from __future__ import annotations

import ast
import io
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("worker", "producers", "sim")

# part -> sub-package ('' the part itself) -> (what it holds, {new module: old flat module})
LAYOUT: dict[str, dict[str, tuple[str, dict[str, str]]]] = {
    "worker": {
        "": (
            "the worker's side: the job contract, the worker runtime, operator verbs",
            {"cli": "cli", "schedule_cli": "schedule_cli", "spend_cli": "spend_cli"},
        ),
        "contract": (
            "what producers and workers share: job models, keys, records, settings, routes, the result store",
            {
                "models": "models",
                "keys": "keys",
                "serde": "serde",
                "bounds": "bounds",
                "records": "records",
                "store": "store",
                "settings": "settings",
                "setting_types": "setting_types",
                "strict": "strict",
                "routes": "routes",
                "pricing": "pricing",
                "connections": "connections",
            },
        ),
        "batches": (
            "batches: the record, the lines' format, the store, the schedules",
            {"record": "batches", "format": "batch_format", "store": "batch_store", "schedules": "schedules"},
        ),
        "process": (
            "a worker process: arq's wiring, the runner, leases, shared resources, health, the fleet",
            {
                "service": "service",
                "runner": "runner",
                "lease": "lease",
                "resources": "resources",
                "scripts": "scripts",
                "held": "held",
                "health": "health",
                "fleet": "fleet",
                "quarantine": "quarantine",
                "logs": "logs",
                "wake": "wake",
                "preflight": "preflight",
            },
        ),
        "calls": (
            "a job's calls: the job functions, the chain, the gateway client, errors, policy, the cache",
            {
                "jobs": "jobs",
                "routing": "routing",
                "call": "call",
                "client": "client",
                "gemini": "gemini",
                "headers": "headers",
                "errors": "errors",
                "policy": "policy",
                "cache": "cache",
                "egress": "egress",
                "pinned": "pinned",
            },
        ),
        "limits": (
            "shared limits: the rate limiter and circuit breaker, budgets, the gate, fair share, token bounds",
            {"limiter": "limiter", "budgets": "budgets", "gate": "gate", "fair": "fair", "tokens": "tokens"},
        ),
        "outputs": (
            "what a job sends on: dead letters, webhooks and their outbox, live events",
            {"dlq": "dlq", "webhooks": "webhooks", "callbacks": "callbacks", "outbox": "outbox", "events": "events"},
        ),
        "observe": (
            "what is measured: metrics, the queue exporter, spend",
            {"metrics": "metrics", "exporter": "exporter", "spend": "spend"},
        ),
    },
    "producers": {
        "": (
            "the Python API, the producer verbs, batches, results and streams read back",
            {
                "api": "api",
                "batches": "batches",
                "images": "images",
                "waits": "waits",
                "streams": "streams",
                "files": "files",
                "coalesce": "coalesce",
                "cli": "cli",
                "batch_cli": "batch_cli",
            },
        ),
        "http": (
            "the HTTP ingress (`llm-router api`): the app, its dependencies and errors, the routes",
            {
                "app": "http",
                "deps": "http_deps",
                "errors": "http_errors",
                "jobs": "http_jobs",
                "batches": "http_batches",
                "events": "http_events",
                "fastpath": "http_fastpath",
                "conns": "http_conns",
                "models": "http_models",
            },
        ),
        "console": (
            "the operator console: its pages and actions, sign-in and sessions, what the pages read",
            {"pages": "console", "auth": "console_auth", "views": "console_views"},
        ),
    },
}
# folders that move as they are (old -> new), and packages that stay where they are
DIRS = {"producers/console_assets": "producers/console/assets"}
KEEP_PACKAGES = {"worker.lua"}  # Lua files and their registry: a package of its own, moved as is
# what a file says of a moved folder in words no rule above sees: (file, old, new)
EDITS = [
    ("producers/console/pages.py", 'Path(__file__).parent / "console_assets"', 'Path(__file__).parent / "assets"'),
    (
        "producers/console/pages.py",
        "stylesheet of our own (console_assets/static)",
        "stylesheet of our own (assets/static)",
    ),
    ("docs/development.md", "(`console_assets/`:", "(`assets/`:"),
    (
        "setup.py",
        '"console_assets/templates/*.html", "console_assets/static/*"',
        '"assets/templates/*.html", "assets/static/*"',
    ),
]
# files never rewritten: this table, and the interface as it was (the reference files)
NOT_REWRITTEN = {".ci/packages.py", "tests/reference/cli-help.txt", "tests/reference/openapi.json"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".ini", ".yml", ".yaml", ".txt", ".sh", ".html", ".in", ".json"}
TEXT_NAMES = {"Procfile", "Makefile", "Dockerfile", ".dockerignore", ".gitignore"}


def moves() -> dict[str, str]:
    """Old dotted module -> new dotted module, for every module whose name changes."""
    found: dict[str, str] = {}
    for part, subs in LAYOUT.items():
        for sub, (_, modules) in subs.items():
            for new, old in modules.items():
                old_name, new_name = f"{part}.{old}", ".".join(p for p in (part, sub, new) if p)
                if old_name != new_name:
                    found[old_name] = new_name
    return found


MOVES = moves()
PACKAGES = {f"{part}.{sub}" for part, subs in LAYOUT.items() for sub in subs if sub} | KEEP_PACKAGES
NEW = set(MOVES.values()) | PACKAGES | set(PARTS)
NEW |= {f"{part}.{new}" for part, subs in LAYOUT.items() for new in subs.get("", ("", {}))[1]}


def path_of(module: str) -> str:
    return module.replace(".", "/") + ".py"


PATH_MOVES = {path_of(old): path_of(new) for old, new in MOVES.items()} | DIRS


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ---------------------------------------------------------------- names


def mapped(name: str) -> str:
    """A dotted name with the module it starts with at its new place (`worker.models.ChatJob` ->
    `worker.contract.models.ChatJob`); unchanged when it is new already or names no moved module."""
    parts = name.split(".")
    old = max((k for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in MOVES), default=0)
    new = max((k for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in NEW), default=0)
    if not old or new > old:
        return name
    return ".".join([MOVES[".".join(parts[:old])], *parts[old:]])


DOTTED = re.compile(r"(?<![\w.])((?:llm_router\.)?)((?:worker|producers|sim)(?:\.[A-Za-z_]\w*)+)")
PATH = re.compile(r"(?<![\w/.-])((?:worker|producers)/[\w/]*\w(?:\.py)?)(?![\w/])")
SHORT = re.compile(r"`([\w-]+\.py)`")


def rewrite_dotted(text: str) -> str:
    return DOTTED.sub(lambda m: m[1] + mapped(m[2]), text)


def rewrite_paths(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        path = m[1]
        for old, new in PATH_MOVES.items():
            if path == old or (path.startswith(old.removesuffix(".py") + "/") and old in DIRS):
                return new + path[len(old) :]
        return path

    return PATH.sub(one, text)


def rewrite_rows(text: str) -> str:
    """In a line naming a path (a docs table row), `short.py` names after it are its old folder's:
    each follows its module, written short when it is in the same folder as that path's new one."""
    out = []
    for line in text.splitlines(keepends=True):
        first = re.search(r"`((?:worker|producers)/[\w/]+\.py)`", line)
        if first is None:
            out.append(line)
            continue
        old_folder = first[1].rsplit("/", 1)[0]
        new_folder = rewrite_paths(first[1]).rsplit("/", 1)[0]

        def short(m: re.Match[str], old_folder: str = old_folder, new_folder: str = new_folder) -> str:
            full = f"{old_folder}/{m[1]}"
            if not (ROOT / full).exists() and full not in PATH_MOVES:
                return m[0]  # not a module of that folder (already new, or a file elsewhere)
            target = PATH_MOVES.get(full, full)  # (a module that stays: its old folder, written in full)
            return f"`{target.rsplit('/', 1)[1]}`" if target.rsplit("/", 1)[0] == new_folder else f"`{target}`"

        head, tail = line[: first.end()], line[first.end() :]
        out.append(head + SHORT.sub(short, tail))
    return "".join(out)


def rewritten(text: str) -> str:
    """Rows first (they read their first path's old folder), then paths, then dotted names."""
    return rewrite_dotted(rewrite_paths(rewrite_rows(text)))


# ---------------------------------------------------------------- python


def module_of(path: str) -> str:
    name = path.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def is_package(path: str) -> bool:
    return path.endswith("/__init__.py")


def resolve(origin: str, package: bool, level: int, module: str | None) -> str:
    base = origin.split(".") if package else origin.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


def relative(current: str, package: bool, target: str) -> tuple[int, str] | None:
    """`target` as a relative import from module `current` (level, module), or None across parts."""
    here = current.split(".") if package else current.split(".")[:-1]
    there = target.split(".")
    if here[0] != there[0]:
        return None
    common = 0
    while common < min(len(here), len(there)) and here[common] == there[common]:
        common += 1
    return len(here) - common + 1, ".".join(there[common:])


def rewrite_imports(source: str, path: str, origin: str) -> str:
    """Every `from … import …` naming a moved module, at its new place; relative imports stay
    relative (computed from where the file is now; `origin`: where it was when they were written)."""
    tree = ast.parse(source, path)
    lines = source.splitlines(keepends=True)
    current, package = module_of(path), is_package(path)
    edits: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
            continue
        prefix = ""
        if node.level:
            absolute = resolve(origin, package, node.level, node.module)
        else:
            absolute = node.module or ""
            if absolute.startswith("llm_router."):
                prefix, absolute = "llm_router.", absolute.removeprefix("llm_router.")
        if absolute.partition(".")[0] not in PARTS:
            continue
        groups: dict[str, list[str]] = {}
        for alias in node.names:
            shown = alias.name + (f" as {alias.asname}" if alias.asname else "")
            full = f"{absolute}.{alias.name}"
            if full in MOVES:  # a moved module (`from worker import batches`: the old module)
                target_module, _, name = MOVES[full].rpartition(".")
                bound = alias.asname or (alias.name if name != alias.name else None)  # the name the code uses
                groups.setdefault(target_module, []).append(name + (f" as {bound}" if bound else ""))
            elif full in NEW:  # a module of a new package (`from worker.batches import record`)
                groups.setdefault(absolute, []).append(shown)
            else:  # a name of a module (`from worker.batches import Batch`: the old module's)
                groups.setdefault(mapped(absolute), []).append(shown)
        unchanged = (node.level == 0 or origin == current) and list(groups) == [absolute]
        if unchanged:
            continue
        statements = []
        for target, names in groups.items():
            where = relative(current, package, target) if node.level else None
            if where is not None:
                level, module = where
                head = "." * level + module
            else:
                head = prefix + target
            statements.append(f"from {head} import {', '.join(names)}")
        indent = " " * node.col_offset
        assert node.end_lineno is not None
        text = "\n".join(indent + s if i else s for i, s in enumerate(statements))
        first = lines[node.lineno - 1]
        last = lines[node.end_lineno - 1]
        edits.append((node.lineno, node.end_lineno, first[: node.col_offset] + text + last[node.end_col_offset :]))
    for start, end, text in sorted(edits, reverse=True):
        lines[start - 1 : end] = [text]
    return "".join(lines)


def binds_a_part(source: str) -> bool:
    """`import worker` (or `import producers.api`…): the part's name is a module in the code."""
    return any(
        isinstance(n, ast.Import) and any(a.name.partition(".")[0] in PARTS and a.asname is None for a in n.names)
        for n in ast.walk(ast.parse(source))
    )


JOINED = re.compile(r"""(["'])(worker|producers)\1(\s*/\s*)(["'])(\w+\.py)\4""")


def rewrite_joined(source: str) -> str:
    """A path joined in code (`ROOT / "worker" / "exporter.py"`), at its new place."""

    def one(m: re.Match[str]) -> str:
        old = f"{m[2]}/{m[5]}"
        if old not in PATH_MOVES:
            return m[0]
        return m[3].join(f"{m[1]}{part}{m[1]}" for part in PATH_MOVES[old].split("/"))

    return JOINED.sub(one, source)


def rewrite_python(source: str, path: str, origin: str) -> str:
    source = rewrite_joined(rewrite_imports(source, path, origin))
    if binds_a_part(source):  # names in the code, too: `worker.settings.X` after `import worker.settings`
        return rewritten(source)
    # else only strings and comments (the code's `worker.x` is a variable's attribute)
    spans = [
        (t.start, t.end)
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type in (tokenize.STRING, tokenize.COMMENT) or t.type == getattr(tokenize, "FSTRING_MIDDLE", -1)
    ]
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    out, at = [], 0
    for (sl, sc), (el, ec) in spans:
        start, end = offsets[sl - 1] + sc, offsets[el - 1] + ec
        out.append(source[at:start])
        out.append(rewritten(source[start:end]))
        at = end
    out.append(source[at:])
    return "".join(out)


# ---------------------------------------------------------------- the run


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return sorted(p for p in out.split("\0") if p)


def is_text(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return Path(name).suffix in TEXT_SUFFIXES or name in TEXT_NAMES


def unplaced() -> list[str]:
    """Modules at the top of worker/ or producers/ that LAYOUT does not name."""
    named = {
        f"{part}/{old}.py" for part, subs in LAYOUT.items() for _, modules in subs.values() for old in modules.values()
    }
    found = []
    for part in LAYOUT:
        for p in sorted((ROOT / part).glob("*.py")):
            if p.name != "__init__.py" and rel(p) not in named:
                found.append(rel(p))
    return found


def pending() -> list[tuple[str, str]]:
    return [(old, new) for old, new in PATH_MOVES.items() if (ROOT / old).exists()]


def git(*args: str) -> None:
    subprocess.run(["git", *args], cwd=ROOT, check=True)


def init_text(part: str, sub: str) -> str:
    what, modules = LAYOUT[part][sub]
    names = "".join(f'    "{m}",\n' for m in sorted(modules))
    return f'"""{part}.{sub}: {what}."""\n\n__all__ = [\n{names}]\n'


def move() -> dict[str, str]:
    """git mv what is at an old path; the sub-packages' __init__.py. Returns new path -> old module."""
    moved: dict[str, str] = {}
    for part, subs in LAYOUT.items():
        for sub in subs:
            if not sub:
                continue
            init = ROOT / part / sub / "__init__.py"
            if not init.exists() and any((ROOT / path_of(f"{part}.{o}")).exists() for o in subs[sub][1].values()):
                init.parent.mkdir(parents=True, exist_ok=True)
                # (the old module of the same name, worker/batches.py, moves first: its folder takes its name)
                clash = ROOT / f"{part}/{sub}.py"
                if clash.exists():
                    target = PATH_MOVES[f"{part}/{sub}.py"]
                    git("mv", f"{part}/{sub}.py", target)
                    moved[target] = f"{part}.{sub}"
                init.write_text(init_text(part, sub))
                git("add", rel(init))
    for old, new in PATH_MOVES.items():
        if not (ROOT / old).exists():
            continue
        if (ROOT / new).exists():
            raise SystemExit(f"{old} and {new} both exist: merge them by hand, then run again")
        (ROOT / new).parent.mkdir(parents=True, exist_ok=True)
        git("mv", old, new)
        if old.endswith(".py"):
            moved[new] = module_of(old)
    return moved


def rewrite(moved: dict[str, str]) -> list[str]:
    changed = []
    for path in tracked():
        if path in NOT_REWRITTEN or not is_text(path):
            continue
        file = ROOT / path
        if not file.is_file():
            continue
        try:
            source = file.read_text()
        except UnicodeDecodeError:
            continue
        if path.endswith(".py"):
            new = rewrite_python(source, path, moved.get(path, module_of(path)))
        else:
            new = rewritten(source)
        for where, old, replacement in EDITS:
            if where == path:
                new = new.replace(old, replacement)
        if new != source:
            file.write_text(new)
            changed.append(path)
    return changed


def tree_lines() -> list[str]:
    """The worker/ and producers/ lines of docs/development.md's tree, from LAYOUT."""
    words = {
        "worker": "the job contract and the worker runtime: the worker's side, operator verbs",
        "producers": "the Python API, the producer verbs, batches, the HTTP ingress",
    }
    out = []
    for part, subs in LAYOUT.items():
        out.append(f"{part + '/':<19}{words[part]}")
        for sub, (what, _) in subs.items():
            if sub:
                out.append(f"  {sub + '/':<17}{what}")
        if part == "worker":
            out.append(f"  {'lua/':<17}the Lua scripts as files, and their registry")
        if part == "producers":
            out.append(f"    {'assets/':<15}the console's templates, script and stylesheet")
    return out


def write_tree() -> bool:
    page = ROOT / "docs" / "development.md"
    text = page.read_text()
    section = re.search(r"^## Where things live\n.*?^```\n(.*?)^```", text, re.M | re.S)
    if section is None:
        print("docs/development.md: no tree in 'Where things live': left as it is", file=sys.stderr)
        return False
    block = section[1].splitlines()
    kept = []
    skipping = False
    for line in block:
        top = not line.startswith(" ")
        if top:
            skipping = line.split()[0] in ("worker/", "producers/")
        if not skipping:
            kept.append(line)
    at = next(
        (
            i
            for i, line in enumerate(kept)
            if not line.startswith(" ") and line.split()[0] not in ("worker/", "producers/")
        ),
        0,
    )
    new_block = "\n".join(kept[:at] + tree_lines() + kept[at:]) + "\n"
    if (ROOT / "worker" / "lua").is_dir() is False:
        new_block = "\n".join(line for line in new_block.splitlines() if not line.strip().startswith("lua/")) + "\n"
    new = text[: section.start(1)] + new_block + text[section.end(1) :]
    if new != text:
        page.write_text(new)
        return True
    return False


def formatted(paths: list[str]) -> None:
    ruff = ROOT / ".venv" / "bin" / "ruff"
    ruff_cmd = str(ruff) if ruff.exists() else shutil.which("ruff")
    py = [p for p in paths if p.endswith(".py")]
    if not ruff_cmd or not py:
        return
    subprocess.run([ruff_cmd, "check", "--fix", "--select", "I", "--quiet", *py], cwd=ROOT, check=False)
    subprocess.run([ruff_cmd, "format", "--quiet", *py], cwd=ROOT, check=False)
    # a longer name can push a comment or a docstring's line over the limit: those are for a person
    long = subprocess.run(
        [ruff_cmd, "check", "--select", "E501", "--output-format", "concise", "--quiet", *py],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if long:
        print(f"lines made too long by the longer names (shorten them by hand):\n{long}", file=sys.stderr)


def main(argv: list[str]) -> int:
    lost = unplaced()
    if lost:
        print(f"not in .ci/packages.py's LAYOUT: {', '.join(lost)} (give each a row)", file=sys.stderr)
        return 1
    if "--check" in argv:
        for old, new in pending():
            print(f"at its old path: {old} belongs at {new} (python3 .ci/packages.py moves it)", file=sys.stderr)
        return 1 if pending() else 0
    moved = move()
    for new, old in sorted(moved.items()):
        print(f"{path_of(old)} -> {new}")
    changed = rewrite(moved)
    if write_tree():
        changed.append("docs/development.md")
    formatted(changed)
    print(f"rewrote {len(changed)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
