"""llm-router's one install namespace: `llm_router.worker`, `llm_router.producers`,
`llm_router.sim`, and `llm_router.cli` (the `llm-router` command).

    from llm_router.producers import ChatJob, Producer     # an installed copy
    arq llm_router.worker.WorkerSettings

An installed copy (a wheel) holds the three folders as subpackages of this one, their imports
rewritten to these names when the wheel is built (setup.py): a service with its own `worker.py`,
`producers.py` or `sim.py` installs it and keeps its own modules. In a checkout the folders stay
top-level and their bare names (`import worker`, `arq worker.WorkerSettings`) are the modules'
own; `llm_router.worker.x` is then an alias of `worker.x`, the same module object, so no
module is ever loaded twice under two names.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import importlib.abc

PARTS = ("worker", "producers", "sim")


class _CheckoutAlias:
    """`llm_router.<part>[.x]` in a checkout: the module `<part>[.x]` itself, imported by its bare name.

    A finder and loader by their methods (the import system asks for no more), not by subclassing
    importlib.abc's: importing that module imports importlib.resources (tempfile, shutil...), ~6 ms
    of every `llm-router` command's start-up."""

    def __init__(self) -> None:
        self._own: dict[int, Any] = {}  # id(module) -> its own spec, between create_module and exec_module

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        head, _, bare = fullname.partition(".")
        if head != __name__ or bare.partition(".")[0] not in PARTS:
            return None
        return importlib.machinery.ModuleSpec(fullname, cast("importlib.abc.Loader", self))

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(spec.name.partition(".")[2])
        self._own[id(module)] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system set the alias's spec on the module: it keeps its own (its name, its file)
        module.__spec__ = self._own.pop(id(module))


def _in_checkout() -> bool:
    """A wheel has the parts inside this package; a checkout has them beside it."""
    here = Path(__file__).resolve().parent
    return not (here / "worker").is_dir() and (here.parent / "worker" / "__init__.py").is_file()


if _in_checkout() and not any(isinstance(f, _CheckoutAlias) for f in sys.meta_path):
    sys.meta_path.insert(0, _CheckoutAlias())


def __getattr__(name: str) -> Any:
    if name == "main":  # the console script's entry point before it was `llm_router.cli:main`
        from .cli import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
