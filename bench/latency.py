"""Latency benchmark: `POST /v1/chat/completions` through `llm-router api` + one worker + Redis,
side by side with the same request sent straight to the simulator, in one run.

For each level of concurrency (1, 10, 50 requests in flight, closed loop, keep-alive
connections, the load generator in this process), the same requests go straight to the
simulator and through the ingress; printed: p50 and p99 of each, what the ingress adds to them,
throughput, and the CPU a request costs the router (api + worker + Redis, from /proc). Then the
CPU the api and the worker use while idle (% of a core), with nothing to do.

With `--litellm` and a `litellm` command on the PATH, its proxy (one process, no database) is
measured the same way, as a third column. Goals (issue 21): added p50 <= 5 ms at one request at
a time; CPU <= 2.4 ms a request at 50 in flight and 0 ms upstream; idle <= 1% of a core.

    python -m bench.latency [--requests 2000] [--latency-ms 0] [--idle-s 10] [--litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.dispatch import KEY, bench_settings, start_sim
from bench.ingress import cpu_s
from harness.processes import LLMRouterProcess, WorkerProcess, answers, settings_env
from harness.redis_server import PrivateRedis, free_port

TOKEN = "bench-token"
LEVELS = (1, 10, 50)


def body(i: int) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"prompt {i}"}]}


@dataclass
class Run:
    took: list[float]
    wall_s: float
    cpu_s: float  # of the system's own processes

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.took) * 1000

    @property
    def p99_ms(self) -> float:
        return sorted(self.took)[max(0, int(len(self.took) * 0.99) - 1)] * 1000

    @property
    def rate(self) -> float:
        return len(self.took) / self.wall_s

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s / len(self.took) * 1000


async def load(url: str, headers: dict[str, str], n: int, concurrency: int, pids: list[int]) -> Run:
    """`n` chat completions, `concurrency` at a time; the CPU `pids` used meanwhile."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as http:

        async def one(i: int, took: list[float] | None) -> None:
            started = time.perf_counter()
            async with http.post(url, json=body(i)) as answer:
                assert answer.status == 200, await answer.text()
                await answer.read()
            if took is not None:
                took.append(time.perf_counter() - started)

        async def closed_loop(requests: range, took: list[float] | None) -> None:
            todo = iter(requests)

            async def client() -> None:
                for i in todo:
                    await one(i, took)

            await asyncio.gather(*(client() for _ in range(concurrency)))

        await closed_loop(range(-max(20, concurrency * 2), 0), None)  # connections open, warm
        took: list[float] = []
        cpu, started = sum(map(cpu_s, pids)), time.perf_counter()
        await closed_loop(range(n), took)
        return Run(took, time.perf_counter() - started, sum(map(cpu_s, pids)) - cpu)


def idle_cpu(pids: list[int], seconds: float) -> list[float]:
    """% of a core each of `pids` uses over `seconds` of nothing to do."""
    before = [cpu_s(p) for p in pids]
    time.sleep(seconds)
    return [(cpu_s(p) - b) / seconds * 100 for p, b in zip(pids, before, strict=True)]


def start_litellm(sim_url: str) -> tuple[subprocess.Popen[bytes], str] | None:
    """The LiteLLM proxy (one process, no database) in front of the simulator, if installed."""
    command = shutil.which("litellm")
    if command is None:
        return None
    config = Path(tempfile.mkstemp(suffix=".yaml")[1])
    config.write_text(
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n"
        f"      model: openai/gpt-4o-mini\n      api_base: {sim_url}\n      api_key: {KEY}\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [command, "--config", str(config), "--port", str(port), "--num_workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not answers(url + "/health/liveliness"):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            return None
        time.sleep(0.5)
    return proc, url + "/v1/chat/completions"


async def run(n: int, latency_ms: float, idle_s: float, litellm: bool, levels: tuple[int, ...] = LEVELS) -> None:
    sim, sim_url = start_sim(latency_ms)
    api = worker = None
    proxy: tuple[subprocess.Popen[bytes], str] | None = None
    rows: list[tuple[int, Run, Run, Run | None]] = []
    try:
        with PrivateRedis() as redis:
            settings = bench_settings(sim_url, redis.url, ingress_tokens={TOKEN: "bench"})
            port = free_port()
            api_url = f"http://127.0.0.1:{port}"
            api = LLMRouterProcess("api", "--port", str(port), env=settings_env(settings), log_path=Path(os.devnull))
            api.wait_started(lambda: answers(f"{api_url}/healthz"), 30, "llm-router api")
            worker = WorkerProcess(settings, Path(os.devnull))
            ours = [api.proc.pid, worker.proc.pid, redis.proc.pid]
            if litellm and (proxy := start_litellm(sim_url)) is None:
                print("(no litellm command on the PATH, or its proxy did not start: left out)")
            direct = {"Authorization": f"Bearer {KEY}"}
            via = {"Authorization": f"Bearer {TOKEN}"}
            for level in levels:
                count = n if level > 1 else max(200, n // 4)
                straight = await load(sim_url + "/chat/completions", direct, count, level, [])
                router = await load(api_url + "/v1/chat/completions", via, count, level, ours)
                other = await load(proxy[1], direct, count, level, [proxy[0].pid]) if proxy else None
                rows.append((level, straight, router, other))
            idle = idle_cpu(ours[:2], idle_s)
    finally:
        if proxy is not None:
            proxy[0].kill()
        for proc in (worker, api, sim):
            if proc is not None:
                proc.stop()
    report(rows, idle, n, latency_ms, idle_s)


def report(rows: list[tuple[int, Run, Run, Run | None]], idle: list[float], n: int, latency: float, s: float) -> None:
    print(f"requests={n} (one at a time: {max(200, n // 4)}) upstream latency={latency:g} ms cores={os.cpu_count()}")
    line: Callable[[str, Run, Run], str] = lambda name, r, d: (  # noqa: E731
        f"  {name:<10} p50 {r.p50_ms:7.2f} ms (+{r.p50_ms - d.p50_ms:6.2f})  p99 {r.p99_ms:7.2f} ms"
        f" (+{r.p99_ms - d.p99_ms:6.2f})  {r.rate:7.0f} req/s  CPU {r.cpu_ms:5.2f} ms a request"
    )
    for level, straight, router, other in rows:
        print(f"{level} in flight:")
        print(
            f"  {'direct':<10} p50 {straight.p50_ms:7.2f} ms            p99 {straight.p99_ms:7.2f} ms"
            f"           {straight.rate:7.0f} req/s"
        )
        print(line("llm-router", router, straight))
        if other is not None:
            print(line("litellm", other, straight))
    print(f"idle {s:g} s: api {idle[0]:.2f}% of a core, worker {idle[1]:.2f}%   (goal <= 1%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="at 10 and 50 in flight (a quarter at 1)")
    parser.add_argument("--latency-ms", type=float, default=0, help="the simulator's upstream latency")
    parser.add_argument("--idle-s", type=float, default=10)
    parser.add_argument("--litellm", action="store_true", help="also the LiteLLM proxy, if installed")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="requests in flight, comma-separated")
    args = parser.parse_args()
    levels = tuple(int(v) for v in args.levels.split(","))
    asyncio.run(run(args.requests, args.latency_ms, args.idle_s, args.litellm, levels))


if __name__ == "__main__":
    main()
