"""Every Lua script the service runs is a `.lua` file beside this module, read by this registry.

A script is one file, or named parts joined in order
(`join("fair_line", "budget_reap", "budget_admit", "limiter_admit")`): a part defines `local
function`s (and locals) that the parts after it use, so what a script is made of is written once,
in the call that joins it. A number the Python side also needs (a batch size, a lifetime) is passed
as a constant: `join(..., REAP_BATCH=100)` starts the script with `local REAP_BATCH = 100`, so
Python's constant is the one source of the value. By convention a part reads a constant as an
UPPER_CASE name it never assigns (`KEYS` and `ARGV` aside).

`join` checks a composition before it answers (a ValueError names the part and the fix): every
part is a file; every `local function` a part calls is defined by a part before it, or by itself
above the call (a call before the definition would call a nil global at run time); every constant
the parts read is passed. The check is regexes over the text with strings and comments blanked,
each part's scan cached by its text (about 10 ms for every composition of the code base, once a process).

Files are read once per process and each composition is built and checked once (`functools.cache`;
the constants are kept in name order, so their order in the call does not matter); redis-py's
`register_script` hashes the text, so the same parts and constants give the same SHA in every
process (worker.process.scripts preloads them).
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    from redis.commands.core import AsyncScript, Script

__all__ = ["join", "names", "register", "source"]

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")

# What a part's text is scanned for, once strings and comments are blanked (`_code`). Those that
# start with a literal (`local`, `function`, `for`) start with no `\b`: a leading `\b` makes
# Python's re try every position (13 times as slow over worker/lua/).
_LONG = re.compile(r"--\[(=*)\[.*?\]\1\]|\[(=*)\[.*?\]\2\]", re.S)  # long comments and strings
_SHORT = re.compile(r"'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\"|--[^\n]*")  # strings, line comments
_DEFINES = re.compile(r"local\s+function\s+([A-Za-z_]\w*)")
_CALLS = re.compile(r"(?<![\w.:])([A-Za-z_]\w*)\s*\(")
_FUNCTION = re.compile(r"function\s+([A-Za-z_]\w*)")  # a definition's name, not a call
_LOCALS = re.compile(r"local\s+(?!function\b)([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)")
_PARAMS = re.compile(r"function\b[^(]*\(([^)]*)\)")
_FOR = re.compile(r"for\s+([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*(?:=|\bin\b)")
_ASSIGNS = re.compile(r"^[ \t]*([A-Z][A-Z0-9_]*)[ \t]*=(?!=)", re.M)  # a global `NAME = ...`
_UPPER = re.compile(r"[A-Z][A-Z0-9_]*")  # a read, unless `_reads` finds it is not a name of its own
# What a part may call without defining it: Lua's keywords (`if (`, `and (`) and the base functions
# of Redis's Lua 5.1 (libraries such as redis.*, cjson.*, string.* are called through a dot).
_BUILTINS = frozenset(
    re.findall(
        r"\w+",
        "and elseif function if in not or return until while "
        "assert error getmetatable ipairs next pairs pcall print rawequal rawget rawset select "
        "setmetatable tonumber tostring type unpack xpcall",
    )
)
_GIVEN = frozenset({"KEYS", "ARGV"})


@functools.cache
def source(name: str) -> str:
    """The text of `<name>.lua` (a ValueError names the files there are when it is not one)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"a Lua part's name is lower_case letters, digits and _: {name!r}")
    path = resources.files(__package__).joinpath(f"{name}.lua")
    if not path.is_file():
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"no Lua script {name!r} in worker/lua/ ({hint}there are: {', '.join(names())})")
    return path.read_text(encoding="utf-8")


def names() -> list[str]:
    """Every script file's name (without `.lua`), sorted."""
    found = (p.name for p in resources.files(__package__).iterdir() if p.name.endswith(".lua"))
    return sorted(n.removesuffix(".lua") for n in found)


def join(*parts: str, **constants: int) -> str:
    """The script made of `parts` in order, after a `local NAME = value` line for each constant
    (in name order); built and checked once per process (a ValueError says what is wrong)."""
    for name, value in constants.items():
        if not _CONSTANT.fullmatch(name) or isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"a Lua constant is an UPPER_CASE name and an int: {name}={value!r}")
    return _join(parts, tuple(sorted(constants.items())))


@functools.cache
def _join(parts: tuple[str, ...], constants: tuple[tuple[str, int], ...]) -> str:
    if not parts:
        raise ValueError("join() needs at least one part")
    texts = []
    for part in parts:
        try:
            texts.append(source(part))
        except ValueError as e:
            raise ValueError(f"{_call(parts)}: {e}") from None
    _check(parts, [_scan(t) for t in texts], {name for name, _ in constants})
    head = "".join(f"local {name} = {value}\n" for name, value in constants)
    return head + "\n".join(texts)


@dataclass(frozen=True)
class _Scan:
    """What one part defines and uses (offsets into its `_code`)."""

    code: str
    defines: dict[str, int]  # local function -> where its definition starts
    calls: list[tuple[str, int]]  # every `name(` that is not a definition, not through a dot
    locals: frozenset[str]  # every name it declares: locals, parameters, loop variables
    reads: frozenset[str]  # the UPPER_CASE names it reads

    def line(self, at: int) -> int:
        return self.code.count("\n", 0, at) + 1


def _blank(match: re.Match[str]) -> str:
    """A string or comment as spaces, its newlines kept (so offsets and line numbers hold)."""
    return "\n".join(" " * len(line) for line in match.group(0).split("\n"))


def _code(text: str) -> str:
    """The text with its strings `''` and its comments gone, its lines kept (for line numbers)."""
    return _SHORT.sub("''", _LONG.sub(_blank, text))


@functools.cache
def _scan(text: str) -> _Scan:
    code = _code(text)
    defines: dict[str, int] = {}
    for m in _DEFINES.finditer(code):
        defines.setdefault(m.group(1), m.start())
    declared = set(defines)
    named = {m.start(1) for m in _FUNCTION.finditer(code)}
    for pattern in (_LOCALS, _PARAMS, _FOR):
        for m in pattern.finditer(code):
            declared.update(n.strip() for n in m.group(1).split(",") if n.strip())
    declared.update(m.group(1) for m in _ASSIGNS.finditer(code))
    return _Scan(
        code=code,
        defines=defines,
        calls=[(m.group(1), m.start(1)) for m in _CALLS.finditer(code) if m.start(1) not in named],
        locals=frozenset(declared),
        reads=frozenset(_reads(code) - _GIVEN),
    )


def _reads(code: str) -> set[str]:
    """The UPPER_CASE names `code` reads: whole names, not a field (`x.NAME`), not assigned (`NAME =`)
    nor a table's key (`{NAME = 1}`)."""
    found = set()
    for m in _UPPER.finditer(code):
        start, end = m.span()
        if start and (code[start - 1].isalnum() or code[start - 1] in "_.:"):
            continue
        if end < len(code) and (code[end].isalnum() or code[end] == "_"):
            continue
        rest = code[end : end + 40].lstrip()
        if rest.startswith("=") and not rest.startswith("=="):
            continue
        found.add(m.group())
    return found


def _check(parts: tuple[str, ...], scans: list[_Scan], passed: set[str]) -> None:
    """A ValueError naming the part and the fix when the composition cannot run as joined."""
    joined = _call(parts)
    declared: set[str] = set()
    for i, (part, scan) in enumerate(zip(parts, scans, strict=True)):
        before = {f for s in scans[:i] for f in s.defines}
        for f, at in scan.calls:
            if f in before or f in _BUILTINS:
                continue
            if f in scan.defines:
                if at < scan.defines[f]:
                    raise ValueError(
                        f"{part}.lua calls its local function {f}() on line {scan.line(at)}, before defining it on"
                        f" line {scan.line(scan.defines[f])}: move the definition above its first call"
                    )
                continue
            later = [p for p, s in zip(parts[i + 1 :], scans[i + 1 :], strict=True) if f in s.defines]
            if later:
                raise ValueError(
                    f"{joined}: {part} calls {f}(), defined by {later[0]}, which comes after it:"
                    f" join {later[0]!r} before {part!r}"
                )
            if f in declared or f in scan.locals:
                continue  # a local variable holding a function (a parameter, `local f = ...`)
            owners = [n for n in names() if n not in parts and f in _scan(source(n)).defines]
            fix = f"add the part {owners[0]!r} before {part!r}" if owners else "define it, or fix the name"
            raise ValueError(f"{joined}: {part} calls {f}(), which no part of it defines: {fix}")
        declared |= scan.locals
    everywhere = set().union(*(s.locals for s in scans))
    missing = {name: part for part, scan in reversed(list(zip(parts, scans, strict=True))) for name in scan.reads}
    for name in everywhere | passed:
        missing.pop(name, None)
    if missing:
        read = ", ".join(f"{name} (read by {part})" for name, part in sorted(missing.items()))
        fix = ", ".join(f"{name}=..." for name in sorted(missing))
        raise ValueError(f"{joined} is not passed the constant(s) {read}: add {fix}")


def _call(parts: tuple[str, ...]) -> str:
    return f"join({', '.join(map(repr, parts))})"


@overload
def register(client: redis.asyncio.Redis, *parts: str, **constants: int) -> AsyncScript: ...
@overload
def register(client: redis.Redis, *parts: str, **constants: int) -> Script: ...
def register(client: Any, *parts: str, **constants: int) -> Any:
    """`join(*parts, **constants)` as a redis-py Script of `client` (EVALSHA, loaded on NOSCRIPT)."""
    return client.register_script(join(*parts, **constants))
