"""One configuration for the fleet: every worker publishes a digest of the settings that must
agree across workers (limits, routes, budgets, prices, retries, bounds...), so a worker started
with other values is seen: by the exporter (`llm_router_config_digests`, the number of distinct
digests among live workers, and its alert), in the worker's own log at start-up (naming the
settings that differ), and by `llm-router fleet`.

What must agree is every setting except the ones listed in PER_PROCESS (tuning of one process,
addresses that differ per host) and secrets (never published, not even hashed: a hash of a
short secret can be guessed offline). A new setting is fleet-wide unless listed here.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
from pydantic import SecretStr
from redis.asyncio import Redis

from ..contract.keys import config_key, worker_config_key, workers_key
from ..contract.settings import SECRET_SETTINGS, Settings
from .lease import HEARTBEAT_STALE_S

# Settings that may differ between processes of one fleet.
PER_PROCESS = frozenset(
    {
        "redis_url",  # the same Redis, reached by another address (and it may hold a password)
        "worker_concurrency",
        "poll_delay_s",
        "idle_poll_s",
        "request_timeout_s",
        "connect_timeout_s",
        "shutdown_grace_s",
        "metrics_port",
        "log_level",  # one worker turned up to debug it is not a fleet that disagrees
        "log_format",
        "exporter_port",
        "schedules_file",  # a path on the worker's host
        # the HTTP ingress's own (it runs no jobs)
        "ingress_max_body_bytes",
        "ingress_max_queue_depth",
        "ingress_wait_s",
        "file_ttl_s",
        "console_enabled",  # the operator console is the ingress's too
        "console_insecure_http",
        "console_session_s",
    }
)
# Never published: secrets by name (beside every SecretStr setting).
SECRETS = SECRET_SETTINGS
SECRET_WORDS = frozenset({"key", "secret", "secrets", "password", "token"})
# A worker's published digest outlives its heartbeat's staleness, and is renewed every keeper tick.
TTL_S = 10 * HEARTBEAT_STALE_S


def is_secret(name: str, value: Any) -> bool:
    return name in SECRETS or isinstance(value, SecretStr) or bool(SECRET_WORDS & set(name.split("_")))


def fleet_settings(settings: Settings) -> dict[str, Any]:
    """The settings that must agree across workers, as JSON values (no secrets)."""
    dumped = settings.model_dump(mode="json")
    return {
        name: dumped[name]
        for name in type(settings).model_fields
        if name not in PER_PROCESS and not is_secret(name, getattr(settings, name))
    }


def digest(fleet: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(fleet, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The environment names of the settings whose values differ."""
    return sorted(name.upper() for name in a.keys() | b.keys() if a.get(name) != b.get(name))


class FleetConfig:
    """This worker's published configuration digest."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.queue_name = settings.queue_name
        self.settings = fleet_settings(settings)
        self.digest = digest(self.settings)
        self._body = orjson.dumps(self.settings, option=orjson.OPT_SORT_KEYS)

    async def publish(self, worker_id: str) -> None:
        ttl_ms = int(TTL_S * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(worker_config_key(worker_id), self.digest, px=ttl_ms)
            pipe.set(config_key(self.digest), self._body, px=ttl_ms)
            await pipe.execute()

    async def withdraw(self, worker_id: str) -> None:
        """A worker that stops cleanly leaves the live workers and takes its digest with it, so a
        worker restarted with a changed setting is not seen to disagree with its former self."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(workers_key(self.queue_name), worker_id)
            pipe.delete(worker_config_key(worker_id))
            await pipe.execute()

    async def peers(self) -> dict[str, int]:
        """Digest -> how many live workers on this queue run it (this one included once published)."""
        return await live_digests(self.redis, self.queue_name)

    async def disagreement(self) -> dict[str, list[str]]:
        """For each other digest among live workers: the settings in which it differs from ours."""
        out: dict[str, list[str]] = {}
        for other in await self.peers():
            if other != self.digest:
                raw = await self.redis.get(config_key(other))
                out[other] = differing(self.settings, orjson.loads(raw)) if raw else ["(expired)"]
        return out


async def live_workers(redis: Redis, queue_name: str) -> dict[str, str | None]:
    """Worker id -> its published digest (None: it published none), for the live workers."""
    ids = [
        raw.decode()
        for raw in await redis.zrangebyscore(workers_key(queue_name), time.time() - HEARTBEAT_STALE_S, "+inf")
    ]
    if not ids:
        return {}
    digests = await redis.mget([worker_config_key(i) for i in ids])
    return {i: d.decode() if d else None for i, d in zip(ids, digests, strict=True)}


async def live_digests(redis: Redis, queue_name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in (await live_workers(redis, queue_name)).values():
        if d is not None:
            counts[d] = counts.get(d, 0) + 1
    return counts


async def report(redis: Redis, queue_name: str) -> list[dict[str, Any]]:
    """The live workers grouped by config digest, the most common first, each other digest with
    the settings in which it differs from that one (`llm-router fleet`, the console's Overview)."""
    workers = await live_workers(redis, queue_name)
    by_digest: dict[str, list[str]] = {}
    for worker_id, found in sorted(workers.items()):
        by_digest.setdefault(found or "-", []).append(worker_id)
    # the digest most workers run is the reference the others are compared with
    ranked = sorted(by_digest, key=lambda d: (-len(by_digest[d]), d))
    bodies = {d: await redis.get(config_key(d)) for d in ranked}
    ref = orjson.loads(bodies[ranked[0]] or b"{}") if ranked else {}
    return [
        {
            "digest": d,
            "workers": by_digest[d],
            "differs_in": differing(ref, orjson.loads(bodies[d] or b"{}")) if i else [],
        }
        for i, d in enumerate(ranked)
    ]
