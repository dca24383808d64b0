"""Every Lua script the service runs is a `.lua` file beside this module, read by this registry.

A script is one file, or named parts joined in order (`join("fair_line", "budget", "limiter_admit")`):
a part defines `local function`s that the parts after it call, so what a script is made of is
written once, in the call that joins it, and never spliced by markers. A number the Python side
also needs (a batch size, a lifetime) is passed as a constant: `join(..., REAP_BATCH=100)` starts
the script with `local REAP_BATCH = 100`, so Python's constant is the one source of the value.

Files are read once per process (`functools.cache`); redis-py's `register_script` hashes the text,
so the same parts and constants give the same SHA in every process (worker.process.scripts
preloads them).
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    from redis.commands.core import AsyncScript, Script

__all__ = ["join", "names", "register", "source"]

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")


@functools.cache
def source(name: str) -> str:
    """The text of `<name>.lua` (a ValueError names the files there are when it is not one)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"a Lua part's name is lower_case letters, digits and _: {name!r}")
    path = resources.files(__package__).joinpath(f"{name}.lua")
    if not path.is_file():
        raise ValueError(f"no Lua script {name!r} in worker/lua/ (there are: {', '.join(names())})")
    return path.read_text(encoding="utf-8")


def names() -> list[str]:
    """Every script file's name (without `.lua`), sorted."""
    found = (p.name for p in resources.files(__package__).iterdir() if p.name.endswith(".lua"))
    return sorted(n.removesuffix(".lua") for n in found)


def join(*parts: str, **constants: int) -> str:
    """The script made of `parts` in order, after a `local NAME = value` line for each constant."""
    if not parts:
        raise ValueError("join() needs at least one part")
    head = []
    for name, value in constants.items():
        if not _CONSTANT.fullmatch(name) or isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"a Lua constant is an UPPER_CASE name and an int: {name}={value!r}")
        head.append(f"local {name} = {value}\n")
    return "".join(head) + "\n".join(source(p) for p in parts)


@overload
def register(client: redis.asyncio.Redis, *parts: str, **constants: int) -> AsyncScript: ...
@overload
def register(client: redis.Redis, *parts: str, **constants: int) -> Script: ...
def register(client: Any, *parts: str, **constants: int) -> Any:
    """`join(*parts, **constants)` as a redis-py Script of `client` (EVALSHA, loaded on NOSCRIPT)."""
    return client.register_script(join(*parts, **constants))
