"""What one worker process shares between its jobs, built once at start-up (worker.process.service)
and handed to every job as `ctx["resources"]`: typed, instead of strings looked up in ctx."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..calls.cache import ResponseCache
    from ..calls.client import AIsaClient
    from ..contract.settings import Settings
    from ..contract.store import ResultStore
    from ..limits.gate import Gate
    from ..limits.limiter import Limiter
    from ..observe.metrics import Labels
    from .lease import Lease
    from .quarantine import Quarantine


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
    # in the model's slot line, worker.calls.call.SlotTurn)
    slot_waiters: int = 0
    # FAIR_SHARE off: jobs still wait in sources' sub-queues (queued while it was on; the keeper looks)
    fair_leftovers: bool = False
    # this process's jobs by how they ended: a result's status (succeeded, failed...),
    # dead_lettered (failed ones stored as dead letters too), requeued (worker.process.service logs them at exit)
    outcomes: Counter[str] = field(default_factory=Counter)
