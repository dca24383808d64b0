"""The Lua registry (worker.lua.registry): every script is a `.lua` file, joined from named parts;
every composition the code joins is checked (a part that is no file, a function called before a
part defines it, a constant not passed are refused with the fix) and built once; no Python module
holds Lua; and the layout the limiter's admission and settlement share with the budget's parts
(their KEYS and ARGV positions) is the one the Python side builds."""

from __future__ import annotations

import ast
import functools
import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from worker.contract.settings import Settings
from worker.limits import budgets, limiter
from worker.lua import registry as lua

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "worker" / "lua"


def indices(name: str, table: str) -> set[int]:
    """The literal indices `table[n]` a script reads (`KEYS[4]`, `ARGV[10]`), comments aside."""
    code = "\n".join(line.split("--", 1)[0] for line in lua.source(name).splitlines())
    return {int(n) for n in re.findall(rf"\b{table}\[(\d+)\]", code)}


# ------------------------------------------------ the compositions in the code, by walking its AST

JOINERS = {"join": 0, "register": 1, "source": 0}  # lua.<verb>(...): where its parts start


@dataclass(frozen=True)
class Composition:
    where: str  # path:line of the call
    verb: str
    parts: tuple[str, ...]
    constants: tuple[tuple[str, Any], ...]


def _lua_call(node: ast.AST) -> tuple[ast.Call, str] | None:
    """`lua.join(...)`, `registry.register(...)`, `lua.source(...)`: the call and its verb, else None."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return None
    func = node.func
    if func.attr in JOINERS and isinstance(func.value, ast.Name) and func.value.id in ("lua", "registry"):
        return node, func.attr
    return None


def _evaluate(call: ast.Call, verb: str, scope: dict[str, Any], where: str) -> Composition:
    """The call's parts and constants, evaluated in `scope` (the module's names, and a helper's
    arguments): `*budgets.ADMIT_PARTS`, `**wake.CONSTANTS` and `RETRY_KEY_TTL_S=...` resolve to
    what the code passes."""
    parts: list[str] = []
    for arg in call.args[JOINERS[verb] :]:
        if isinstance(arg, ast.Starred):
            parts.extend(eval(compile(ast.Expression(arg.value), where, "eval"), scope))
        else:
            parts.append(eval(compile(ast.Expression(arg), where, "eval"), scope))
    constants: dict[str, Any] = {}
    for kw in call.keywords:
        value = eval(compile(ast.Expression(kw.value), where, "eval"), scope)
        constants.update(value if kw.arg is None else {kw.arg: value})
    return Composition(where, verb, tuple(parts), tuple(constants.items()))


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


@functools.cache
def compositions() -> tuple[Composition, ...]:
    """Every `lua.join` / `lua.register` / `lua.source` of worker/, producers/ and harness/, with
    what it passes. A helper that passes its parameter on (worker.batches.record's
    `_counting(redis, script)`) is followed to its calls in the same module. A call the walk
    cannot resolve fails the test that uses this: extend the walk, do not skip the call."""
    found: list[Composition] = []
    for path in sorted(p for part in ("worker", "producers", "harness") for p in (ROOT / part).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        calls = [hit for n in ast.walk(tree) if (hit := _lua_call(n))]
        if not calls:
            continue
        scope = vars(importlib.import_module(_module(path)))
        helpers: dict[str, tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.Call, str]] = {}
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                params = {a.arg for a in fn.args.args}
                for call, verb in filter(None, map(_lua_call, ast.walk(fn))):
                    passed = [*call.args[JOINERS[verb] :], *(kw.value for kw in call.keywords)]
                    if {n.id for a in passed for n in ast.walk(a) if isinstance(n, ast.Name)} & params:
                        helpers[fn.name] = (fn, call, verb)
        passed_on = {id(call) for _, call, _ in helpers.values()}
        for site, verb in calls:
            if id(site) not in passed_on:
                found.append(_evaluate(site, verb, scope, f"{path.relative_to(ROOT)}:{site.lineno}"))
        for node in ast.walk(tree):
            func = node.func if isinstance(node, ast.Call) else None
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if isinstance(node, ast.Call) and name in helpers:
                fn, call, verb = helpers[name]
                pairs = zip(fn.args.args, node.args, strict=False)
                given = {a.arg: v.value for a, v in pairs if isinstance(v, ast.Constant)}
                given |= {
                    kw.arg: kw.value.value for kw in node.keywords if kw.arg and isinstance(kw.value, ast.Constant)
                }
                found.append(_evaluate(call, verb, {**scope, **given}, f"{path.relative_to(ROOT)}:{node.lineno}"))
    return tuple(found)


def test_every_composition_in_the_code_joins():
    """Each call site's parts and constants, as the code passes them, pass join's checks."""
    found = compositions()
    assert any(c.parts == limiter.ADMIT_PARTS for c in found), "the walk missed the limiter's admission"
    assert any(c.where.startswith("worker/batches/record.py") for c in found), "the walk missed _counting's calls"
    for c in found:
        if c.verb == "source":
            lua.source(*c.parts)
        else:
            assert lua.join(*c.parts, **dict(c.constants)), c.where


def test_every_script_file_is_used_and_every_used_name_is_a_file():
    files = set(lua.names())
    assert files == {p.stem for p in LUA.glob("*.lua")}
    used = {name for c in compositions() for name in c.parts}
    assert not used - files, f"names joined that are no file of worker/lua/: {sorted(used - files)}"
    assert not files - used, f"worker/lua/ files no composition uses: {sorted(files - used)}"


def test_a_script_is_its_parts_in_order_after_its_constants():
    text = lua.join("budget_reap", "budget_keep", TOMBSTONE_MS=9, REAP_BATCH=7)
    assert text.startswith("local REAP_BATCH = 7\nlocal TOMBSTONE_MS = 9\n")  # in name order
    assert text.index("local function budget_reap") < text.index("return budget_reap(")
    assert text.endswith(lua.source("budget_keep"))


def test_a_composition_is_built_once():
    """The same parts and constants (in any order) answer the very same string: one build, one check."""
    first = lua.join(*limiter.ADMIT_PARTS, **budgets.CONSTANTS)
    assert lua.join(*limiter.ADMIT_PARTS, **dict(reversed(budgets.CONSTANTS.items()))) is first
    assert lua.join(*limiter.ADMIT_PARTS, **budgets.CONSTANTS) is first
    assert lua.join(*limiter.ADMIT_PARTS, **{**budgets.CONSTANTS, "REAP_BATCH": 1}) is not first


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: lua.source("no_such_script"), "no Lua script 'no_such_script' in worker/lua/ .*limiter_admit"),
        (lambda: lua.source("budget_kep"), "did you mean 'budget_keep'"),
        (lambda: lua.source("../settings"), "lower_case letters"),
        (lambda: lua.join(), "at least one part"),
        (lambda: lua.join("wake", ttl=5), "UPPER_CASE name and an int"),
        (lambda: lua.join("wake", TOKEN_TTL_MS="5; redis.call('FLUSHALL')"), "UPPER_CASE name and an int"),
        (lambda: lua.join("wake", TOKEN_TTL_MS=[5]), "UPPER_CASE name and an int"),  # not a TypeError
        (lambda: lua.join("wake", "no_such_part", TOKEN_TTL_MS=5), r"join\('wake', 'no_such_part'\): no Lua script"),
        (
            lambda: lua.join("budget_keep", "budget_reap", **budgets.CONSTANTS),
            r"budget_keep calls budget_reap\(\), defined by budget_reap, which comes after it: "
            "join 'budget_reap' before 'budget_keep'",
        ),
        (
            lambda: lua.join("budget_keep", **budgets.CONSTANTS),
            r"budget_keep calls budget_reap\(\), which no part of it defines: add the part 'budget_reap' before",
        ),
        (
            lambda: lua.join("budget_reap", "budget_keep", REAP_BATCH=1),
            r"is not passed the constant\(s\) TOMBSTONE_MS \(read by budget_reap\): add TOMBSTONE_MS=",
        ),
    ],
)
def test_bad_names_and_compositions_are_refused_with_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.fixture
def parts(monkeypatch) -> Iterator[dict[str, str]]:
    """Synthetic parts: join reads them instead of worker/lua/ (the test fills the dict)."""
    fake: dict[str, str] = {}

    def source(name: str) -> str:
        if name not in fake:
            raise ValueError(f"no Lua script {name!r}")
        return fake[name]

    monkeypatch.setattr(lua, "source", source)
    monkeypatch.setattr(lua, "names", lambda: sorted(fake))
    lua._join.cache_clear()  # no composition of real or earlier fake parts answers from the cache
    yield fake
    lua._join.cache_clear()


def test_a_part_calling_a_later_parts_function_is_refused(parts):
    parts["p_def"] = "local function helper(x) return x end\n"
    parts["p_use"] = "return helper(1)\n"
    assert lua.join("p_def", "p_use").endswith("return helper(1)\n")
    with pytest.raises(ValueError, match=r"p_use calls helper\(\), defined by p_def, .*join 'p_def' before 'p_use'"):
        lua.join("p_use", "p_def")


def test_a_part_calling_a_function_no_part_defines_is_refused(parts):
    parts["p_def"] = "local function helper(x) return x end\n"
    parts["p_use"] = "return helper(1)\n"
    parts["p_typo"] = "return helpr(1)\n"
    with pytest.raises(
        ValueError, match=r"p_use calls helper\(\), which no part .*add the part 'p_def' before 'p_use'"
    ):
        lua.join("p_use")
    with pytest.raises(ValueError, match=r"p_typo calls helpr\(\), which no part of it defines: define it, or fix"):
        lua.join("p_def", "p_typo")


def test_a_part_calling_its_own_function_above_its_definition_is_refused(parts):
    parts["p_early"] = "local x = helper(1)\n\nlocal function helper(y) return y end\nreturn x\n"
    with pytest.raises(
        ValueError, match=r"p_early.lua calls its local function helper\(\) on line 1, before .* line 3"
    ):
        lua.join("p_early")


def test_a_constant_a_part_reads_must_be_passed(parts):
    parts["p_const"] = "return LIMIT + 1\n"
    with pytest.raises(ValueError, match=r"is not passed the constant\(s\) LIMIT \(read by p_const\): add LIMIT="):
        lua.join("p_const")
    assert lua.join("p_const", LIMIT=3) == "local LIMIT = 3\nreturn LIMIT + 1\n"


def test_what_is_no_call_of_a_missing_function_is_not_refused(parts):
    """Lua's built-ins and libraries, method calls, a parameter or local called, recursion, names in
    strings and comments, KEYS and ARGV, upper-case locals of an earlier part and table keys."""
    parts["p_first"] = "local B = {n = 0}\nlocal function first(n) return n end\n"
    parts["p_rest"] = (
        "-- helper(1) in a comment, and MISSING_CONSTANT\n"
        "--[[ long comment: gone(2)\n NOR_THIS ]]\n"
        "local s = 'not_a_call(3) NOR_THIS'\n"
        "local t = redis.call('TIME')\n"
        "local raw = cjson.encode({MAX = tonumber(ARGV[1]), n = string.format('%d', #KEYS)})\n"
        "local function each(xs, fn) for _, x in ipairs(xs) do fn(x) end end\n"
        "local function fact(n) if n < 2 then return 1 end return n * fact(n - 1) end\n"
        "local L = {}\nL.f = function(x) return x end\n"
        "local up = s:upper()\nB.n = first(select('#', unpack({1, 2})))\n"
        "each({1}, function(x) return pcall(tostring, x) end)\n"
        "return {fact(3), type(raw), L.f(1), up, B.n, math.max(1, 2), table.concat({})}\n"
    )
    assert lua.join("p_first", "p_rest")


def test_no_python_module_holds_lua():
    holders = [
        str(p.relative_to(ROOT))
        for part in ("worker", "producers", "sim")
        for p in (ROOT / part).rglob("*.py")
        if re.search(r"redis\.p?call\(", p.read_text())
    ]
    assert not holders, f"Lua in Python strings (move it to worker/lua/*.lua): {holders}"


def test_the_budget_reads_its_keys_and_argv_after_the_admissions_own():
    own_keys, own_args = indices("limiter_admit", "KEYS"), indices("limiter_admit", "ARGV")
    assert max(own_keys) == limiter.ADMIT_KEYS and max(own_args) == limiter.ADMIT_ARGS
    assert min(indices("budget_admit", "KEYS")) == limiter.ADMIT_KEYS + 1
    assert min(indices("budget_admit", "ARGV")) == limiter.ADMIT_ARGS + 1


def test_the_settlement_passes_the_budget_its_keys_and_argv_after_its_own():
    assert max(indices("limiter_settle", "ARGV") - {limiter.SETTLE_ARGS + 1}) == limiter.SETTLE_ARGS
    k, a = limiter.SETTLE_KEYS, limiter.SETTLE_ARGS
    call = (
        f"budget_settle(KEYS[{k + 1}], KEYS[{k + 2}], KEYS[{k + 3}], "
        f"{{unpack(ARGV, {a + 1}, {a + budgets.SETTLE_ARGS})}})"
    )
    assert call in lua.source("limiter_settle")
    assert max(int(n) for n in re.findall(r"a\[(\d+)\]", lua.source("budget_settle"))) == budgets.SETTLE_ARGS


async def test_the_limiter_builds_that_layout(monkeypatch):
    """What Limiter.admit and settle_call send: their own KEYS and ARGV, then the budget's."""
    sent: list[tuple[list[str], list[Any]]] = []

    async def capture(redis, calls, **_):
        sent.extend((list(keys), list(args)) for _, keys, args in calls)
        return [["ok", 0, ""]]

    monkeypatch.setattr(limiter, "run_scripts", capture)
    lim = limiter.Limiter(Redis(), Settings(_env_file=None))
    plan = budgets.Plan(model="m", scopes=[], keys=["res", "deadlines", "learned"], args=[1, "m", 10, 20])
    await lim.admit("m", 30, 1.0, budget=plan)
    [(keys, args)] = sent
    assert keys[limiter.ADMIT_KEYS :] == plan.keys and args[limiter.ADMIT_ARGS :] == plan.args
    settlement = (["res", "deadlines", "learned"], ["id", "", "m", 1, 2, "1", 1e-6, "", ""])
    assert len(settlement[1]) == budgets.SETTLE_ARGS
    _, keys, args = lim.settle_call("m", booked_tokens=3, used_tokens=1, outcome="ok", pause_s=0, budget=settlement)
    assert keys[limiter.SETTLE_KEYS :] == settlement[0] and args[limiter.SETTLE_ARGS :] == settlement[1]
