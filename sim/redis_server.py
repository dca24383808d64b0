"""A private, throwaway redis-server for the demo, the tests and the benchmarks.

By default it keeps nothing on disk; `extra_args` can turn persistence on (the chaos tests
run it with `--appendonly yes`). It listens on a free loopback port, so it never touches a
Redis someone else is using.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from redis import Redis
from redis.exceptions import RedisError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except (RedisError, OSError, ValueError):
        return False


def redis_server_binary(install: bool = False) -> str:
    """The redis-server path; with install=True, apt-get installs it when missing."""
    binary = shutil.which("redis-server")
    if binary is None and install and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server",
                       shell=True, check=False, stdout=subprocess.DEVNULL)
        binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server (or set REDIS_URL)")
    return binary


class PrivateRedis:
    def __init__(self, install: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = redis_server_binary(install)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             *self.extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not reachable(self.url):  # readiness, bounded
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown save (start() again brings it back on the same port)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
