"""Lua scripts sent together: several EVALSHAs in one round trip, and all of a worker's scripts
loaded once at start-up.

redis-py's own way (a Script called on a pipeline) asks `SCRIPT EXISTS` first, a round trip of
its own each time, and a plain Script call that meets a Redis without the script (restarted,
or `SCRIPT FLUSH`) answers NOSCRIPT and loads it: a thousand jobs starting at once would load
each script a thousand times. Here every script is loaded at start-up and a pipeline of
EVALSHAs is sent as one write. A call Redis did not run, answering NOSCRIPT (it lost its
scripts) or LOADING (it is reading its data back after a restart), is sent again through the
Script (which loads the script, and retries LOADING as any single command does), and so is
every call after it if `rerun_rest` (for scripts that only make sense after the one before, and
are idempotent). A call that ran is never sent twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import BusyLoadingError, NoScriptError

# What Redis answers to a call it did not run.
NOT_RUN = (NoScriptError, BusyLoadingError)
ScriptCall = tuple[AsyncScript, Sequence[Any], Sequence[Any]]  # script, keys, args


async def run_scripts(redis: Redis, calls: Sequence[ScriptCall], *, rerun_rest: bool = False) -> list[Any]:
    """The answers of `calls`, in order, sent in one round trip (not atomically: each script is)."""
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        answers = await pipe.execute(raise_on_error=False)
    rerun = False
    for i, (answer, (script, keys, args)) in enumerate(zip(answers, calls, strict=True)):
        if isinstance(answer, NOT_RUN) or (rerun and rerun_rest):
            rerun = True
            answers[i] = await script(keys=keys, args=args)
        elif isinstance(answer, Exception):
            raise answer
    return list(answers)


async def preload(redis: Redis, scripts: Iterable[AsyncScript]) -> None:
    """Load every script once (SCRIPT LOAD is idempotent), so no call meets NOSCRIPT at start-up."""
    for script in scripts:
        script.sha = await redis.script_load(script.script)
