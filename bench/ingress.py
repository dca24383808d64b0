"""HTTP ingress benchmark: what `llm-router api` costs over the Python API, in one run.

  (a) enqueue rate: N chat jobs by `POST /v1/jobs` to one ingress process (an aiohttp client,
      `concurrency` requests in flight on keep-alive connections), next to N `Producer.enqueue`
      calls from this process at the same concurrency, interleaved rounds, the best of each, with
      the CPU a job costs the enqueuing process (the ingress; this one for the Python API).
      Goal: HTTP >= 0.5 x the Python API. (a') the same one request at a time (N/3 each).
  (b) added latency at light load: M sequential chat jobs through a worker running against the
      zero-latency simulator, by `Producer.enqueue` + `Producer.wait` (direct), then by
      `POST /v1/chat/completions` (the HTTP round trip, same worker). Goal: p50(HTTP) -
      p50(direct) <= 5 ms (LiteLLM's proxy reports a 2-12 ms median).
  (c) long-polls: P concurrent `GET /v1/jobs/{id}?wait=S` held by one ingress process, its RSS
      before and while they wait, then every job's result saved and the time until all answered.

The simulator, the worker and the ingress run as `llm-router` processes, Redis is a private server.

    python -m bench.ingress [--jobs 3000] [--concurrency 50] [--latency-jobs 300] [--polls 1000] [--rounds 3]
                            [--no-console]

The operator console is on (and unused) as `llm-router api` serves it by default; `--no-console`
runs the same with CONSOLE_ENABLED=false, to show the console costs the ingress nothing unused.
`--console-ab` compares the two in one run: two ingress processes side by side on the same
Redis, simulator and worker, one with the console on (unused) and one with it off, their (a) and
(b) measured in alternating rounds (the order flipped each round), and their RSS once started;
on / off ratios, so a shared machine's load falls on both alike.

    python -m bench.ingress --console-ab [--jobs 2000] [--latency-jobs 300] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import time
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from bench.dispatch import bench_settings, start_sim
from harness.processes import LLMRouterProcess, WorkerProcess, answers, settings_env
from harness.redis_server import PrivateRedis, free_port
from producers.api import Producer
from worker.contract.keys import job_key
from worker.contract.models import ChatJob, JobResult
from worker.contract.settings import Settings
from worker.contract.store import ResultStore

TOKEN = "bench-token"
SOURCE = "bench"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def job_body(i: int) -> dict[str, object]:
    return {"kind": "chat", "model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"prompt {i}"}]}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def python_enqueue_rate(settings: Settings, n: int, concurrency: int) -> tuple[float, float]:
    """(jobs/s, CPU µs per job of this process) for N `Producer.enqueue` calls."""
    semaphore = asyncio.Semaphore(concurrency)
    async with Producer(settings.redis_url, queue_name=settings.queue_name, source=SOURCE) as producer:
        await producer.redis.flushdb()

        async def one(i: int) -> None:
            async with semaphore:
                await producer.enqueue(ChatJob.model_validate(job_body(i)))

        await one(-1)
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        rate, cpu = n / (time.perf_counter() - started), time.process_time() - cpu
        assert await producer.queued() == n + 1
    return rate, cpu / n * 1e6


async def http_enqueue_rate(
    settings: Settings, url: str, api_pid: int, n: int, concurrency: int
) -> tuple[float, float, float]:
    """(jobs/s, CPU µs per job of the ingress process, and of this one, the client) for N `POST /v1/jobs`."""
    await Redis.from_url(settings.redis_url).flushdb()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, headers=AUTH, connector=connector) as http:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with semaphore, http.post("/v1/jobs", json=job_body(i)) as answer:
                assert answer.status == 202, await answer.text()
                await answer.read()

        await asyncio.gather(*(one(-1 - i) for i in range(concurrency)))  # open the connections
        started, cpu, client = time.perf_counter(), cpu_s(api_pid), time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        rate, cpu = n / (time.perf_counter() - started), cpu_s(api_pid) - cpu
        client = time.process_time() - client
    async with Producer(settings.redis_url, queue_name=settings.queue_name) as producer:
        assert await producer.queued() == n + concurrency
    return rate, cpu / n * 1e6, client / n * 1e6


async def direct_latencies(settings: Settings, m: int) -> list[float]:
    took = []
    async with Producer(settings.redis_url, queue_name=settings.queue_name, source=SOURCE) as producer:
        for i in range(-10, m):  # 10 to warm up
            started = time.perf_counter()
            job_id = await producer.enqueue(ChatJob.model_validate(job_body(i)))
            result = await producer.wait(job_id, 30)
            if i >= 0:
                took.append(time.perf_counter() - started)
            assert result.status == "succeeded", result.error
    return took


async def http_latencies(url: str, m: int) -> list[float]:
    took = []
    async with aiohttp.ClientSession(url, headers=AUTH) as http:
        for i in range(-10, m):
            body = {k: v for k, v in job_body(i).items() if k != "kind"}
            started = time.perf_counter()
            async with http.post("/v1/chat/completions", json=body) as answer:
                assert answer.status == 200, await answer.text()
                await answer.read()
            if i >= 0:
                took.append(time.perf_counter() - started)
    return took


async def long_polls(settings: Settings, url: str, api_pid: int, p: int, wait_s: float) -> dict[str, float]:
    redis = Redis.from_url(settings.redis_url)
    ids = [f"{SOURCE}@poll-{i}" for i in range(p)]
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:  # pending jobs no worker takes (not in the queue)
            pipe.set(job_key(job_id), b"{}", ex=300)
        await pipe.execute()
    before = rss_mb(api_pid)
    connector = aiohttp.TCPConnector(limit=p)
    timeout = aiohttp.ClientTimeout(total=wait_s + 60)
    async with aiohttp.ClientSession(url, headers=AUTH, connector=connector, timeout=timeout) as http:

        async def poll(job_id: str) -> str:
            async with http.get(f"/v1/jobs/{job_id}", params={"wait": str(wait_s)}) as answer:
                return str((await answer.json()).get("content"))

        polls = [asyncio.create_task(poll(job_id)) for job_id in ids]
        held = rss_mb(api_pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until every poll is connected and waiting
            await asyncio.sleep(0.5)
            held = max(held, rss_mb(api_pid))
            if await redis.pubsub_numpat() and _established(url) >= p:
                break
        await asyncio.sleep(1)
        held = max(held, rss_mb(api_pid))
        store = ResultStore(redis, 60)
        started = time.perf_counter()
        for job_id in ids:
            await store.save(JobResult(job_id=job_id, status="succeeded", content="done"))
        contents = await asyncio.gather(*polls)
        woken = time.perf_counter() - started
    await redis.aclose()
    assert contents.count("done") == p, f"{p - contents.count('done')} long-polls ended without the result"
    return {"before_mb": before, "held_mb": held, "woken_s": woken}


def _established(url: str) -> int:
    """Client connections to the ingress's port in ESTABLISHED state (from /proc/net/tcp)."""
    port = int(url.rsplit(":", 1)[1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


def p50_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def p99_ms(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99) - 1] * 1000


async def run(n: int, concurrency: int, m: int, p: int, rounds: int, console: bool = True) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * p + 1024)), hard))  # children inherit it
    sim, base_url = start_sim()
    api = worker = None
    try:
        with PrivateRedis() as redis:
            settings = bench_settings(
                base_url, redis.url, poll_delay_s=0.01, ingress_tokens={TOKEN: SOURCE}, console_enabled=console
            )
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            api = LLMRouterProcess("api", "--port", str(port), env=settings_env(settings), log_path=Path(os.devnull))
            api.wait_started(lambda: answers(f"{url}/healthz"), 30, "llm-router api")

            python, http_ = [], []
            for _ in range(rounds):  # interleaved: a burst of load elsewhere on the machine hits both
                python.append(await python_enqueue_rate(settings, n, concurrency))
                http_.append(await http_enqueue_rate(settings, url, api.proc.pid, n, concurrency))
            one_python = await python_enqueue_rate(settings, n // 3, 1)
            one_http = await http_enqueue_rate(settings, url, api.proc.pid, n // 3, 1)
            await Redis.from_url(settings.redis_url).flushdb()

            # the worker polls an idle queue every 2 ms: its poll is most of a job's latency at light load
            worker = WorkerProcess(settings.model_copy(update={"poll_delay_s": 0.002}), Path(os.devnull))
            direct = await direct_latencies(settings, m)
            http = await http_latencies(url, m)
            worker.stop()
            worker = None

            polls = await long_polls(settings, url, api.proc.pid, p, wait_s=60)
    finally:
        for proc in (worker, api, sim):
            if proc is not None:
                proc.stop()
    added = p50_ms(http) - p50_ms(direct)
    print(
        f"jobs={n} concurrency={concurrency} latency-jobs={m} polls={p} cores={os.cpu_count()}"
        f" console={'on (unused)' if console else 'off'}"
    )
    (python_rate, python_cpu), (http_rate, http_cpu, client_cpu) = max(python), max(http_)
    print(f"(a) best of {rounds} interleaved rounds:")
    print(
        f"(a) Producer.enqueue (Python API)   {python_rate:8.0f} jobs/s   {python_cpu:5.0f} µs CPU a job (this process)"
    )
    print(
        f"(a) POST /v1/jobs (one ingress)      {http_rate:8.0f} jobs/s   {http_cpu:5.0f} µs CPU a job (the ingress),"
        f" {client_cpu:.0f} µs (the aiohttp client, this process)"
    )
    print(
        f"    HTTP / Python API = {http_rate / python_rate:.2f}   (goal >= 0.50)"
        f"   every round: {', '.join(f'{h[0] / p[0]:.2f}' for p, h in zip(python, http_, strict=True))}"
    )
    print(
        f"(a') one request at a time: Producer.enqueue {one_python[0]:6.0f} jobs/s, POST /v1/jobs {one_http[0]:6.0f}"
        f" jobs/s: HTTP / Python API = {one_http[0] / one_python[0]:.2f}"
    )
    print(f"(b) direct job (enqueue + wait)      p50 {p50_ms(direct):6.2f} ms   p99 {p99_ms(direct):6.2f} ms")
    print(f"(b) POST /v1/chat/completions        p50 {p50_ms(http):6.2f} ms   p99 {p99_ms(http):6.2f} ms")
    print(f"    added p50 = {added:.2f} ms   (goal <= 5 ms)")
    print(
        f"(c) {p} long-polls on one ingress: RSS {polls['before_mb']:.0f} MB idle, {polls['held_mb']:.0f} MB "
        f"holding them ({(polls['held_mb'] - polls['before_mb']) * 1024 / p:.0f} KB each); "
        f"all answered {polls['woken_s']:.2f} s after the results were saved"
    )


async def console_ab(n: int, concurrency: int, m: int, rounds: int) -> None:
    """The console on (unused) against off, in one run: see the module's docstring."""
    sim, base_url = start_sim()
    apis: dict[str, tuple[LLMRouterProcess, str]] = {}
    worker = None
    try:
        with PrivateRedis() as redis:
            settings = bench_settings(base_url, redis.url, poll_delay_s=0.01, ingress_tokens={TOKEN: SOURCE})
            for name, on in (("on", True), ("off", False)):
                port = free_port()
                env = settings_env(settings.model_copy(update={"console_enabled": on}))
                api = LLMRouterProcess("api", "--port", str(port), env=env, log_path=Path(os.devnull))
                apis[name] = (api, f"http://127.0.0.1:{port}")
                api.wait_started(
                    lambda u=apis[name][1]: answers(f"{u}/healthz"), 30, f"llm-router api (console {name})"
                )
            await asyncio.sleep(1)
            rss = {name: rss_mb(api.proc.pid) for name, (api, _) in apis.items()}
            rates: dict[str, list[tuple[float, float, float]]] = {"on": [], "off": []}
            for r in range(rounds):
                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    api, url = apis[name]
                    rates[name].append(await http_enqueue_rate(settings, url, api.proc.pid, n, concurrency))
            await Redis.from_url(settings.redis_url).flushdb()
            worker = WorkerProcess(settings.model_copy(update={"poll_delay_s": 0.002}), Path(os.devnull))
            took: dict[str, list[float]] = {"on": [], "off": []}
            for r in range(rounds):
                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    took[name] += await http_latencies(apis[name][1], max(m // rounds, 1))
    finally:
        for proc in (worker, *(api for api, _ in apis.values()), sim):
            if proc is not None:
                proc.stop()
    print(
        f"console on (unused) against off, one run: jobs={n} concurrency={concurrency} latency-jobs={m} rounds={rounds}"
    )
    best = {name: max(r[0] for r in rates[name]) for name in rates}
    cpu = {name: statistics.median(r[1] for r in rates[name]) for name in rates}
    p50 = {name: p50_ms(took[name]) for name in took}
    p99 = {name: p99_ms(took[name]) for name in took}
    rows = [
        (f"(a) `POST /v1/jobs` jobs/s, best of {rounds}", f"{best['on']:,.0f}", f"{best['off']:,.0f}", best),
        ("(a) ingress CPU a job, median of the rounds", f"{cpu['on']:.0f} µs", f"{cpu['off']:.0f} µs", cpu),
        ("(b) `POST /v1/chat/completions` p50", f"{p50['on']:.2f} ms", f"{p50['off']:.2f} ms", p50),
        ("(b) p99", f"{p99['on']:.2f} ms", f"{p99['off']:.2f} ms", p99),
        ("RSS once started", f"{rss['on']:.0f} MB", f"{rss['off']:.0f} MB", rss),
    ]
    print("| | console on, unused | console off | on / off |")
    print("|---|---|---|---|")
    for what, shown_on, shown_off, figures in rows:
        print(f"| {what} | {shown_on} | {shown_off} | {figures['on'] / figures['off']:.2f} |")
    each = {name: ", ".join(f"{r[0]:,.0f}" for r in rates[name]) for name in rates}
    print(f"| (a) each round, jobs/s | {each['on']} | {each['off']} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of (a)")
    parser.add_argument("--no-console", action="store_true", help="CONSOLE_ENABLED=false (default: on, unused)")
    parser.add_argument("--console-ab", action="store_true", help="the console on (unused) against off, in one run")
    args = parser.parse_args()
    if args.console_ab:
        asyncio.run(console_ab(args.jobs, args.concurrency, args.latency_jobs, args.rounds))
        return
    asyncio.run(run(args.jobs, args.concurrency, args.latency_jobs, args.polls, args.rounds, not args.no_console))


if __name__ == "__main__":
    main()
