"""Redis with Sentinel on this machine, for the failover test: a master, a replica and three
sentinels (quorum 2), real `redis-server` processes on free loopback ports, in a work dir.

`url` is the `redis+sentinel://` URL every llm-router process takes as REDIS_URL;
`kill_master()` SIGKILLs whichever server is the master now, and `wait_failover()` waits for
the sentinels to promote the replica.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from .processes import wait_started
from .redis_server import free_port, reachable, redis_server_binary
from .wait import wait_until

SERVICE = "mymaster"


class SentinelCluster:
    def __init__(self, workdir: Path, server_args: tuple[str, ...] = (), down_after_ms: int = 1000) -> None:
        self.dir = workdir
        self.binary = redis_server_binary()
        self.server_args = server_args
        self.down_after_ms = down_after_ms
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinels: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def restart(self, port: int) -> None:
        """Start a killed server again on its port (as a pod restarts): the sentinels make it a
        replica of the new master."""
        self._server(port)

    def _server(self, port: int, *args: str) -> None:
        data = self.dir / f"redis-{port}"
        data.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f"redis-{port}.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    *(self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""),
                    *("--repl-diskless-sync-delay", "0"),  # a replica syncs at once, not after 5 s
                    *self.server_args,
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.servers[port] = proc
        wait_started(proc, lambda: reachable(f"redis://127.0.0.1:{port}/0"), 10, f"redis-server on {port}")

    def _sentinel(self, port: int, master_port: int) -> None:
        conf = self.dir / f"sentinel-{port}.conf"  # a sentinel rewrites its own config file
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        with open(self.dir / f"sentinel-{port}.log", "ab") as log:
            proc = subprocess.Popen([self.binary, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT)
        self.sentinels[port] = proc
        wait_started(proc, lambda: reachable(f"redis://127.0.0.1:{port}/0"), 10, f"sentinel on {port}")

    def start(self) -> SentinelCluster:
        master, replica = free_port(), free_port()
        self._server(master)
        self._server(replica, "--replicaof", "127.0.0.1", str(master))
        wait_until(lambda: self._replica_in_sync(replica), 15, "the replica to sync")
        for port in (free_port(), free_port(), free_port()):
            self._sentinel(port, master)
        wait_until(lambda: self._sentinels_agree(master), 20, "the sentinels to see the master and each other")
        return self

    def _replica_in_sync(self, port: int) -> bool:
        try:
            info: dict[str, Any] = Redis(port=port, socket_timeout=1).info("replication")  # type: ignore[assignment]
        except RedisError:
            return False
        return bool(info.get("master_link_status") == "up")

    def _sentinels_agree(self, master: int) -> bool:
        try:
            for port in self.sentinels:
                state = Redis(port=port, socket_timeout=1).sentinel_master(SERVICE)
                if state["port"] != master or state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                    return False
        except RedisError:
            return False
        return True

    def master_port(self) -> int | None:
        for port in self.sentinels:
            try:
                host_port = Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(SERVICE)
            except RedisError:
                continue
            if host_port:
                return int(host_port[1])
        return None

    def replica_lag_bytes(self) -> int:
        """How far the replica is behind the master now (bytes of the replication stream)."""
        port = self.master_port()
        assert port is not None
        info: dict[str, Any] = Redis(port=port, socket_timeout=1).info("replication")  # type: ignore[assignment]
        return int(info["master_repl_offset"]) - int(info["slave0"]["offset"])

    def kill_master(self) -> int:
        """SIGKILL the master (no shutdown save, unreplicated writes gone); its port."""
        port = self.master_port()
        assert port is not None
        self.servers[port].kill()
        self.servers[port].wait(10)
        return port

    def wait_failover(self, old: int, timeout: float = 30) -> int:
        """The new master's port, once the sentinels promoted it and it accepts writes."""

        def promoted() -> int | None:
            port = self.master_port()
            if port is None or port == old:
                return None
            try:
                info: dict[str, Any] = Redis(port=port, socket_timeout=1).info("replication")  # type: ignore[assignment]
                role = info["role"]
            except RedisError:
                return None
            return port if role == "master" else None

        port = wait_until(promoted, timeout, "the sentinels to promote the replica", interval=0.1)
        assert port is not None
        return port

    def stop(self) -> None:
        for proc in [*self.sentinels.values(), *self.servers.values()]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.sentinels.values(), *self.servers.values()]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
