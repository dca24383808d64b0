"""Reading the gateway's rate-limit headers, in every form AIsa and OpenAI send them.

`Retry-After` may be seconds or an HTTP date; `retry-after-ms` milliseconds;
`x-ratelimit-reset-*` a UNIX timestamp (AIsa) or a duration like `6m0s` / `20ms` (OpenAI).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Anything above this is a UNIX timestamp, not a number of seconds to wait.
_EPOCH_THRESHOLD = 1_000_000_000


def parse_duration(value: str) -> float | None:
    """`1s`, `6m0s`, `20ms`, `1h2m3.5s` -> seconds; None when it is not a duration."""
    value = value.strip()
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_wait(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a header value in any supported form; None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    now = time.time() if now is None else now
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        wait = number - now if number > _EPOCH_THRESHOLD else number
        return max(wait, 0.0)
    duration = parse_duration(value)
    if duration is not None:
        return duration
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError, IndexError):
        return None


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long the gateway asked us to wait, preferring the most precise header."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    wait = parse_wait(headers.get("retry-after"), now)
    if wait is not None:
        return wait
    # Some gateways send only the reset time on a 429.
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset"):
        wait = parse_wait(headers.get(name), now)
        if wait is not None:
            return wait
    return None


def rate_limit_snapshot(headers: Mapping[str, str], now: float | None = None) -> dict[str, float]:
    """The numeric x-ratelimit-limit/remaining-* headers present, e.g. {"remaining-requests": 587},
    plus `reset-in`: seconds until the later of the request and token resets."""
    if not isinstance(headers, dict):  # httpx's Headers scans every header on each lookup: one pass
        headers = dict(headers.items())
    snapshot: dict[str, float] = {}
    resets = [parse_wait(headers.get(f"x-ratelimit-reset-{n}"), now) for n in ("requests", "tokens")]
    if any(r is not None for r in resets):
        snapshot["reset-in"] = max(r for r in resets if r is not None)
    for name in ("limit-requests", "remaining-requests", "limit-tokens", "remaining-tokens"):
        value = headers.get(f"x-ratelimit-{name}")
        if value is not None:
            try:
                snapshot[name] = float(value)
            except ValueError:
                continue
    return snapshot
