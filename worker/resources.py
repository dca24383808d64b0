"""What one worker process shares between its jobs, built once at start-up (worker.service)
and handed to every job as `ctx["resources"]`: typed, instead of strings looked up in ctx."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import ResponseCache
    from .client import AIsaClient
    from .gate import Gate
    from .lease import Lease
    from .limiter import Limiter
    from .metrics import Labels
    from .quarantine import Quarantine
    from .settings import Settings
    from .store import ResultStore


@dataclass
class Resources:
    settings: Settings
    client: AIsaClient
    store: ResultStore
    limiter: Limiter
    gate: Gate
    labels: Labels
    quarantine: Quarantine
    cache: ResponseCache
    # stores results and releases their jobs in one round trip (None: the store alone)
    lease: Lease | None = None
    # job ids running in this process: the keeper renews their leases
    running: set[str] = field(default_factory=set)
    # the queue's gate as the keeper last read it (None: open); workers pick no jobs while closed
    paused: dict[str, Any] | None = None
    # jobs waiting for a rate-limit slot (fair share: FAIR_SHARE_SLOT_WAITERS at most), and their
    # turn (worker.call.SlotTurn: first come first served)
    slot_waiters: int = 0
    slot_turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    # FAIR_SHARE off: jobs still wait in sources' sub-queues (queued while it was on; the keeper looks)
    fair_leftovers: bool = False
