"""The Lua registry (worker.lua.registry): every script is a `.lua` file, joined from named parts;
no Python module holds Lua; and the layout the limiter's admission and settlement share with the
budget's parts (their KEYS and ARGV positions) is the one the Python side builds."""

from __future__ import annotations

import re
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


def test_a_script_is_its_parts_in_order_after_its_constants():
    text = lua.join("budget_reap", "budget_keep", REAP_BATCH=7, TOMBSTONE_MS=9)
    assert text.startswith("local REAP_BATCH = 7\nlocal TOMBSTONE_MS = 9\n")
    assert text.index("local function budget_reap") < text.index("return budget_reap(")
    assert text.endswith(lua.source("budget_keep"))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: lua.source("no_such_script"), "no Lua script 'no_such_script' in worker/lua/ .*limiter_admit"),
        (lambda: lua.source("../settings"), "lower_case letters"),
        (lambda: lua.join(), "at least one part"),
        (lambda: lua.join("wake", ttl=5), "UPPER_CASE name and an int"),
        (lambda: lua.join("wake", TOKEN_TTL_MS="5; redis.call('FLUSHALL')"), "UPPER_CASE name and an int"),
    ],
)
def test_bad_names_and_constants_are_refused_with_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_no_python_module_holds_lua():
    holders = [
        str(p.relative_to(ROOT))
        for part in ("worker", "producers", "sim")
        for p in (ROOT / part).rglob("*.py")
        if re.search(r"redis\.p?call\(", p.read_text())
    ]
    assert not holders, f"Lua in Python strings (move it to worker/lua/*.lua): {holders}"


def test_every_script_file_is_used_and_every_used_name_is_a_file():
    code = "\n".join(p.read_text() for part in ("worker", "producers") for p in (ROOT / part).rglob("*.py"))
    named = set(re.findall(r"\"([a-z][a-z0-9_]*)\"", code))
    files = set(lua.names())
    assert files == {p.stem for p in LUA.glob("*.lua")}
    unused = sorted(files - named)
    assert not unused, f"worker/lua/ files no module registers: {unused}"
    for p in (ROOT / "worker").rglob("*.py"):
        for call in re.findall(r"lua\.(?:register|join)\(([^)]*)\)", p.read_text()):
            for name in re.findall(r"\"([a-z][a-z0-9_]*)\"", call):
                assert name in files, f"{p.relative_to(ROOT)} names {name!r}, not a file of worker/lua/"


def test_every_function_a_script_calls_is_defined_by_a_part_before_it():
    """A part's `local function f` is seen only by the parts after it: the join order matters."""
    defined_by = {f: name for name in lua.names() for f in re.findall(r"^local function (\w+)", lua.source(name), re.M)}
    for parts in (limiter.ADMIT_PARTS, limiter.SETTLE_PARTS, ("budget_settle", "budget_settle_alone")):
        seen: set[str] = set()
        for name in parts:
            code = lua.source(name)
            for f in set(re.findall(r"\b(\w+)\(", code)) & set(defined_by):
                assert defined_by[f] == name or defined_by[f] in seen, f"{name} calls {f} before {defined_by[f]}"
            seen.add(name)


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
