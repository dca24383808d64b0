"""What one worker process shares between its jobs, built once at start-up (worker.service)
and handed to every job as `ctx["resources"]`: typed, instead of strings looked up in ctx."""

from __future__ import annotations

from collections import Counter
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
    # jobs waiting for a rate-limit slot (fair share: FAIR_SHARE_SLOT_WAITERS at most; they wait
    # in the model's slot line, worker.call.SlotTurn)
    slot_waiters: int = 0
    # FAIR_SHARE off: jobs still wait in sources' sub-queues (queued while it was on; the keeper looks)
    fair_leftovers: bool = False
    # this process's jobs by how they ended: a result's status (succeeded, failed...),
    # dead_lettered (failed ones stored as dead letters too), requeued (worker.service logs them at exit)
    outcomes: Counter[str] = field(default_factory=Counter)
