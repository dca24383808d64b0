"""The paused queue: a 401 (auth) or 402 (credits) closes the gate for every worker; workers
stop picking jobs, jobs that meet it go back to the queue, and one worker per
PROBE_INTERVAL_S probes the gateway until it can open it again.

    llm-router:gate        JSON {reason, message, model, since} while the queue is paused
    llm-router:gate:probe  which worker probes this interval (expires after PROBE_INTERVAL_S)

The limiter's admission script reads the same key, so a call never starts past a closed gate.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from ..calls import errors
from ..calls.call import Call
from ..calls.routing import call_once
from ..contract.keys import GATE, PROBE_LOCK

if TYPE_CHECKING:
    from ..process.resources import Resources

log = logging.getLogger("llm_router.gate")

# The model a credits probe asks when the gate does not name one.
PROBE_MODEL = "gpt-4o-mini"


class Gate:
    def __init__(self, redis: Redis, probe_interval_s: float) -> None:
        self.redis = redis
        self.probe_interval_s = probe_interval_s

    async def read(self) -> dict[str, Any] | None:
        raw = await self.redis.get(GATE)
        return None if raw is None else json.loads(raw)

    async def close(self, reason: str, message: str, model: str) -> bool:
        """Pause the whole queue; False if it was already paused."""
        gate = {"reason": reason, "message": message, "model": model, "since": time.time()}
        closed = bool(await self.redis.set(GATE, json.dumps(gate), nx=True))
        if closed:
            log.error("queue paused (%s): %s; probing the gateway until it passes", reason, message)
        return closed

    async def open(self) -> bool:
        return bool(await self.redis.delete(GATE))

    async def watch(self, resources: Resources) -> dict[str, Any] | None:
        """The gate now; while it is closed, probe it (one worker per interval). None: open."""
        gate = await self.read()
        if gate is None:
            return None
        if not await self.redis.set(PROBE_LOCK, "1", nx=True, px=int(self.probe_interval_s * 1000)):
            return gate
        if await probe(resources, gate):
            await self.open()
            log.warning("queue resumed: the gateway accepts calls again (was paused for %s)", gate.get("reason"))
            return None
        log.warning("queue still paused (%s): %s", gate.get("reason"), gate.get("message"))
        return gate


async def probe(resources: Resources, gate: dict[str, Any]) -> bool:
    """401: the key works again if GET /models passes (free). 402: only a real call can tell:
    one token from the model that ran out, recorded and charged like any other call."""
    try:
        if gate.get("reason") != "credits":
            await resources.client.models()
            return True
    except errors.AIsaError:
        return False
    model = gate.get("model") or PROBE_MODEL
    call = Call(
        resources,
        "_probe",
        {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1},
        max_wait_s=0,
        kind="probe",
    )
    _, exc = await call_once(call, model, {**call.payload, "model": model}, tokens=0, waited=0.0)
    return exc is None
