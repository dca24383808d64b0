"""The simulator's admin routes (`/_sim/config`, `/_sim/stats`, `/_sim/reset`, `/_sim/credits`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from sim.server import SimServer


def sim_admin(target: SimServer | str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST `body` to `path` (GET without one) on a SimServer or a simulator base URL
    (`http://host:port` or `.../v1`); the JSON answer."""
    base = target if isinstance(target, str) else target.base_url
    url = base.removesuffix("/v1") + path
    response = httpx.post(url, json=body) if body is not None else httpx.get(url)
    response.raise_for_status()
    return response.json()
