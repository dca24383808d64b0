"""One way to wait for something: poll a condition until it holds, bounded by a timeout."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

What = str | Callable[[], str]


def wait_until(condition: Callable[[], T], timeout: float, what: What, interval: float = 0.05) -> T:
    """Call `condition` every `interval` s until it returns something truthy, and return that.
    After `timeout` s: TimeoutError naming `what` (a string, or a function giving one)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        _check(deadline, timeout, what)
        time.sleep(interval)
    return value


async def wait_until_async(
    condition: Callable[[], T | Awaitable[T]], timeout: float, what: What, interval: float = 0.05
) -> T:
    """`wait_until` for a coroutine: `condition` may be async, or sync (then run in a thread)."""
    deadline = time.monotonic() + timeout
    while not (value := await _call(condition)):
        _check(deadline, timeout, what)
        await asyncio.sleep(interval)
    return value


async def _call(condition: Callable[[], T | Awaitable[T]]) -> T:
    if inspect.iscoroutinefunction(condition):
        return await condition()
    value = await asyncio.to_thread(condition)
    return await value if inspect.isawaitable(value) else value


def _check(deadline: float, timeout: float, what: What) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"timed out after {timeout:g}s waiting for {what() if callable(what) else what}")
