"""Start-up benchmark: how long a process takes before it does its work (issue 21's goals).

  interpreter:  `python -c pass`, this venv's Python alone (what every command pays anyway)
  --help:       `llm-router --help`, whole process (goal <= 0.3 s)
  chat:         `llm-router chat --no-wait`: imports, settings, Redis, one enqueue, whole process;
                its own overhead is that minus the interpreter (goal <= 0.4 s)
  worker:       `llm-router worker` from exec until its /readyz answers 200 (it has polled
                Redis: ready to claim; goal <= 1 s), polled every 5 ms

Each is run `--runs` times after one warm-up (the page cache), one after another; medians with
the range. Redis is a private server; the worker's AIsa URL is never called.

    python -m bench.startup [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from harness.processes import answers, llm_router
from harness.redis_server import PrivateRedis, free_port


def timed(start: Callable[[], subprocess.Popen[bytes]], ready: Callable[[subprocess.Popen[bytes]], None]) -> float:
    t0 = time.perf_counter()
    proc = start()
    try:
        ready(proc)
        return time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def exits_ok(proc: subprocess.Popen[bytes]) -> None:
    # no timeout: with one, Popen.wait polls with sleeps of up to 50 ms (the figure would be
    # rounded up to them); a blocking waitpid returns as the process ends
    if proc.wait() != 0:
        raise SystemExit(f"{proc.args!r} exited {proc.returncode}")


def worker_ready(port: int) -> Callable[[subprocess.Popen[bytes]], None]:
    url = f"http://127.0.0.1:{port}/readyz"

    def ready(proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while not answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not become ready (exit {proc.returncode})")
            time.sleep(0.005)

    return ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    redis = PrivateRedis().start()
    cli = llm_router()
    env = {**os.environ, "REDIS_URL": redis.url, "AISA_API_KEY": "sk-bench", "QUEUE_NAME": "llm-router:startup"}

    def run(args: list[str], extra: dict[str, str] | None = None) -> Callable[[], subprocess.Popen[bytes]]:
        child_env = {**env, **(extra or {})}
        return lambda: subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env)

    def worker() -> tuple[Callable[[], subprocess.Popen[bytes]], Callable[[subprocess.Popen[bytes]], None]]:
        port = free_port()
        return run([cli, "worker"], {"METRICS_PORT": str(port)}), worker_ready(port)

    cases: dict[str, Callable[[], float]] = {
        "interpreter": lambda: timed(run([sys.executable, "-c", "pass"]), exits_ok),
        "--help": lambda: timed(run([cli, "--help"]), exits_ok),
        "chat --no-wait": lambda: timed(
            run([cli, "chat", "--model", "gpt-4o-mini", "--message", "hi", "--no-wait"]), exits_ok
        ),
        "worker to ready": lambda: timed(*worker()),
    }
    try:
        seconds = {}
        for name, case in cases.items():
            case()  # warm-up
            seconds[name] = [case() for _ in range(runs)]
    finally:
        redis.stop()
    load = os.getloadavg()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"runs={runs}: seconds, median (min-max)")
    for name, values in seconds.items():
        print(f"  {name:<16} {statistics.median(values):.3f}  ({min(values):.3f}-{max(values):.3f})")
    own = statistics.median(seconds["chat --no-wait"]) - statistics.median(seconds["interpreter"])
    print(f"--help {statistics.median(seconds['--help']):.3f} s (goal <= 0.3)")
    print(f"chat's own overhead (chat - interpreter) {own:.3f} s (goal <= 0.4)")
    print(f"worker to ready {statistics.median(seconds['worker to ready']):.3f} s (goal <= 1)")


if __name__ == "__main__":
    main()
