"""The packaging of llm-router beside pyproject.toml (which holds the metadata): which packages a
build holds, and the one install namespace of a wheel (issue 19).

A wheel holds one top-level package, `llm_router`, with the checkout's top-level folders mapped
into it (`worker/` -> `llm_router/worker/`, and `producers/`, `sim/`); their absolute imports
(`from worker.contract.settings import Settings`) are rewritten to the new names as the files are copied
(`from llm_router.worker.contract.settings import Settings`), so an installed copy never claims the
generic top-level names a service may have itself. An editable install (`pip install -e .`,
the Makefile's) keeps the checkout's bare names, which `llm_router/__init__.py` aliases.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PARTS = ("worker", "producers", "sim")  # the folders mapped into llm_router: every package of them ships
NAMESPACE = "llm_router"


def subpackages(part: str) -> list[str]:
    """`part` and every package folder under it, dotted (phase two's sub-packages come by themselves)."""
    return sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / part).rglob("__init__.py"))


def data_folders(part: str) -> list[str]:
    """The folders under `part` that hold package data but no `__init__.py` (the console's
    templates and static files), dotted: listed as packages of their own, as setuptools asks
    (else every build warns that they are "absent from the packages configuration")."""
    return sorted(
        ".".join(p.relative_to(ROOT).parts)
        for p in (ROOT / part).rglob("*")
        if p.is_dir()
        and p.name != "__pycache__"
        and not (p / "__init__.py").exists()
        and any(f.suffix in DATA_SUFFIXES for f in p.iterdir())
    )


DATA_SUFFIXES = (".lua", ".html", ".css", ".js")


def namespaced(source: str, filename: str) -> str:
    """`source` with each absolute import of a part (`from worker.x import y`) naming it inside the
    namespace (`from llm_router.worker.x import y`); docstrings and strings are left alone."""
    lines = source.splitlines(keepends=True)
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import) and any(a.name.partition(".")[0] in PARTS for a in node.names):
            # `import worker.x` binds `worker`: no rewrite keeps that name; the tree uses `from … import`
            raise SystemExit(f"{filename}:{node.lineno}: write `from {node.names[0].name} import …` (setup.py)")
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").partition(".")[0] in PARTS:
            line = lines[node.lineno - 1]
            head, tail = line[: node.col_offset], line[node.col_offset :]
            new, n = re.subn(r"^from(\s+)(?=[a-z])", rf"from\g<1>{NAMESPACE}.", tail, count=1)
            if n != 1:
                raise SystemExit(f"{filename}:{node.lineno}: cannot rewrite {line.strip()!r} (setup.py)")
            lines[node.lineno - 1] = head + new
    return "".join(lines)


class NamespacedBuild(build_py):
    """Copies the modules, then rewrites their imports into the namespace (not in editable mode,
    which copies nothing: the checkout's own files are imported)."""

    def build_module(self, module, module_file, package):
        outfile, copied = super().build_module(module, module_file, package)
        if outfile.endswith(".py"):  # also when an earlier build's copy was kept: the rewrite is idempotent
            path = Path(outfile)
            path.write_text(namespaced(path.read_text(), module_file))
        return outfile, copied


if "editable_wheel" in sys.argv:
    # `pip install -e .`: the checkout's names as they are (worker, producers, sim, llm_router)
    packages = [NAMESPACE, *(p for part in PARTS for p in subpackages(part) + data_folders(part))]
    package_dir: dict[str, str] = {}
else:
    packages = [NAMESPACE, *(f"{NAMESPACE}.{p}" for part in PARTS for p in subpackages(part) + data_folders(part))]
    package_dir = {NAMESPACE: NAMESPACE, **{f"{NAMESPACE}.{part}": part for part in PARTS}}

if __name__ == "__main__":
    setup(
        packages=packages,
        package_dir=package_dir,
        # phase two's Lua files, beside the modules that load them; the console's templates and assets
        package_data={"": [f"*{suffix}" for suffix in DATA_SUFFIXES]},
        cmdclass={"build_py": NamespacedBuild},
    )
