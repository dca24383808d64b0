"""Redis failover in the middle of a run (`make chaos`; too slow for the default suite), and a master
that restarts before the sentinels act, with and without AOF: a master,
a replica and three sentinels (real redis-servers), three `llm-router worker` processes and a
producer on the `redis+sentinel://` URL. The master is SIGKILLed while jobs are being enqueued
and run; the sentinels promote the replica; everyone follows it. Reported per job the producer
was told was enqueued: completed, lost (no result, not queued: the write died with the master),
and double-charged (the gateway billed it more than once)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import RedisError

from harness.processes import WorkerProcess
from harness.redis_sentinel import SentinelCluster
from harness.wait import wait_until_async
from producers.api import Producer
from sim.server import SimServer, Simulator
from tests.helpers import API_KEY
from worker.contract.settings import Settings

pytestmark = pytest.mark.failover

JOBS = 300
KILL_AT = 100  # the master dies after this many enqueues

# async replication (Redis's default) / the master refuses writes unless a replica acknowledged
# within 10 s (bounds what a failover can lose; writes wait while no replica is in sync)
MODES = {"async": (), "min-replicas": ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")}


@pytest.fixture
def sim_big_log():
    with SimServer(Simulator([API_KEY], credits=1000.0)) as server:
        server.sim.requests = deque(maxlen=100_000)  # every call, to attribute charges to jobs
        yield server


def promote_then_restart(cluster: SentinelCluster, old: int) -> float:
    """When the replica was promoted; then the old master comes back, as a pod would, and the
    sentinels make it the new master's replica."""
    cluster.wait_failover(old)
    at = time.monotonic()
    cluster.restart(old)
    return at


def restart_at_once(cluster: SentinelCluster, old: int) -> float:
    """The master's pod restarts before the sentinels' down-after: no failover, it stays master."""
    time.sleep(0.5)
    cluster.restart(old)
    return time.monotonic()


async def run_through(
    label: str, cluster: SentinelCluster, sim: SimServer, tmp_path, disrupt: Callable[[SentinelCluster, int], float]
) -> dict[str, Any]:
    """Three workers and a producer on the cluster; the master SIGKILLed after KILL_AT enqueues,
    then `disrupt` (in a thread: when Redis took writes again). What happened to each job."""
    settings = Settings(
        aisa_api_key=API_KEY,
        aisa_base_url=sim.base_url,
        redis_url=cluster.url,
        worker_concurrency=10,
        poll_delay_s=0.02,
        lease_s=3,
        metrics_port=0,
        request_timeout_s=5,
        _env_file=None,
    )
    workers = [WorkerProcess(settings, tmp_path / f"w{i}.log") for i in range(3)]
    acked: dict[str, str] = {}
    refused = 0
    try:
        async with Producer(cluster.url, queue_name=settings.queue_name) as producer:
            killed_at, lag = 0.0, 0
            for i in range(JOBS):
                if i == KILL_AT:
                    lag = cluster.replica_lag_bytes()
                    old = cluster.kill_master()
                    killed_at = time.monotonic()
                    back = asyncio.create_task(asyncio.to_thread(disrupt, cluster, old))
                prompt = f"{label} job {i}"
                try:
                    acked[await producer.chat("gpt-4o-mini", prompt)] = prompt
                except (RedisError, OSError):
                    refused += 1  # the producer was told: not a loss
                await asyncio.sleep(0.02)
            back_at = await back

            async def settled() -> bool:
                done = await asyncio.gather(*(producer.redis.exists(f"llm-router:result:{i}") for i in acked))
                return all(done) or (await producer.queued() == 0 and not any(w.proc.poll() for w in workers))

            await wait_until_async(settled, 120, "every job to end or leave the queue", interval=0.5)
            await asyncio.sleep(settings.lease_s + 1)  # a job re-run after the failover has its lease to come back
            await wait_until_async(settled, 60, "the re-runs", interval=0.5)
            results = {i: await producer.result(i) for i in acked}
            queued = await producer.queued()
        exits = [w.proc.poll() for w in workers]  # None: still running
        logs = [w.log()[-2000:] for w in workers]
        calls = Counter(
            m["content"]
            for r in list(sim.sim.requests)
            if r["path"].endswith("/chat/completions")
            for m in r["body"]["messages"]
            if m["role"] == "user"
        )
    finally:
        for w in workers:
            w.stop()
        cluster.stop()
    report = {
        "mode": label,
        "enqueued": len(acked),
        "refused_at_enqueue": refused,
        "completed": sum(1 for r in results.values() if r is not None and r.status == "succeeded"),
        "failed": sum(1 for r in results.values() if r is not None and r.status == "failed"),
        "lost": sum(1 for r in results.values() if r is None),
        "still_queued": queued,
        "double_charged": sum(1 for i in acked if calls[acked[i]] > 1),
        "replica_lag_at_kill_bytes": lag,
        "writes_back_after_s": round(back_at - killed_at, 1),
        "worker_exits": exits,
    }
    print("failover:", json.dumps(report))
    assert exits == [None, None, None], logs  # every worker rode it out
    assert report["completed"] + report["failed"] + report["lost"] == len(acked)
    return report


@pytest.mark.parametrize("mode", list(MODES))
async def test_failover_mid_run(mode, sim_big_log, tmp_path):
    cluster = SentinelCluster(tmp_path / "redis", server_args=MODES[mode]).start()
    report = await run_through(mode, cluster, sim_big_log, tmp_path, promote_then_restart)
    assert report["failed"] == 0 and report["double_charged"] == 0
    assert report["completed"] >= report["enqueued"] * 0.9  # most work survives; the figures say what did not


@pytest.mark.parametrize("persistence", ["none", "aof"])
async def test_master_restarts_before_the_sentinels_act(persistence, sim_big_log, tmp_path):
    """What AOF changes: the master comes back within the sentinels' down-after (30 s here), so
    there is no failover. With no persistence it returns empty, stays the master, and the replica
    copies its emptiness; with AOF (fsync always) it reloads every acknowledged write."""
    aof = ("--appendonly", "yes", "--appendfsync", "always") if persistence == "aof" else ()
    cluster = SentinelCluster(tmp_path / "redis", server_args=aof, down_after_ms=30_000).start()
    report = await run_through(f"restart, {persistence}", cluster, sim_big_log, tmp_path, restart_at_once)
    if persistence == "aof":
        assert report["lost"] == 0 and report["double_charged"] == 0
    else:
        assert report["lost"] > 0  # the jobs and results written before the crash are gone
