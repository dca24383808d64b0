"""Fair share between sources: each source (a producer's `source`) waits in a sub-queue of its
own, and workers take jobs from the sub-queues by weighted fair queuing (stride scheduling), so
no source can starve another however many jobs it queues.

Sources are bounded: the ones the settings name (SOURCE_WEIGHTS, SOURCE_LIMITS, the ingress's
INGRESS_TOKENS, METRIC_SOURCES), then the first FAIR_SHARE_MAX_SOURCES others seen (a set in
Redis, so the bound is the fleet's, not one process's); past it every new name shares `other`.
Jobs without a source share `default`.
"""

from __future__ import annotations

from .keys import fair_key
from .settings import Settings

DEFAULT_SOURCE = "default"
OTHER_SOURCE = "other"


def known_sources(settings: Settings) -> frozenset[str]:
    """The sources the configuration names: each has a sub-queue whatever else is seen."""
    names = set(settings.source_weights) | set(settings.source_limits) | set(settings.metric_sources)
    names |= set(settings.ingress_tokens.values())
    return frozenset(names | {DEFAULT_SOURCE, OTHER_SOURCE})


def weight(settings: Settings, source: str) -> float:
    """A source's share (SOURCE_WEIGHTS; 1 when not named)."""
    return settings.source_weights.get(source, 1.0)


def waiting_key(queue_name: str, source: str) -> str:
    """A source's sub-queue: its waiting jobs, scored as they would be in the queue."""
    return fair_key(queue_name, "q", source)


def passes_key(queue_name: str) -> str:
    """Sorted set source -> virtual time of its next pick: the sources with jobs waiting."""
    return fair_key(queue_name, "pass")


def clock_key(queue_name: str) -> str:
    """The virtual time of the last pick: where a source that starts waiting joins."""
    return fair_key(queue_name, "vt")


def running_key(queue_name: str, source: str) -> str:
    """Sorted set job id -> lease end: the source's running jobs."""
    return fair_key(queue_name, "run", source)


def seen_key(queue_name: str) -> str:
    """Set: the sources the settings do not name that were given a sub-queue (first seen)."""
    return fair_key(queue_name, "seen")
