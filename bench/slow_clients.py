"""Hostile clients against one `llm-router api` process: is `/healthz` answered, is its memory
bounded, are the connections closed?

  (a) slowloris: C unauthenticated connections, each sending a request line and then one header
      byte every 2 s (never the end of its headers), held for D seconds;
  (b) abandoned long-polls: P `GET /v1/jobs/{id}?wait=60` on pending jobs (no worker takes
      them), all closed by the client once the ingress holds them.

  (c) slow readers: R `GET /v1/files/{id}/content` of an 8 MiB file by clients that read none
      of it (a 4 KiB receive buffer), held up to 60 s: when the ingress cut them
      (INGRESS_SEND_TIMEOUT_S, `--send-timeout`), and its RSS meanwhile;
  (d) huge bodies: H `POST /v1/jobs` one after the other, each 31 MB of `tools` (under
      INGRESS_MAX_BODY_BYTES, far over MAX_JOB_BYTES): the time to each answer and the RSS.

Through all, `/healthz` is probed on a fresh connection every 0.25 s (its latency, and the
probes that failed: no answer in 5 s or an error) and the ingress's RSS sampled. Reported: when
the ingress closed the slow connections (seconds after each was opened), how many it still held
at the end, and how long after the clients left the long-polls ended (the ingress's request
counter of `/v1/jobs/{job_id}`, scraped from /metrics).

    python -m bench.slow_clients [--slow 2000] [--hold 30] [--polls 2000] [--api-nofile 0] [--max-connections 0]
                                 [--readers 200] [--send-timeout 10] [--huge 3]

`--api-nofile 1024` starts the ingress with that (soft) file-descriptor limit, `ulimit -n`;
`--max-connections` sets INGRESS_MAX_CONNECTIONS. The other settings are the defaults but for
INGRESS_TOKENS and INGRESS_WAIT_S=60.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from redis.asyncio import Redis

from bench.ingress import rss_mb
from harness.processes import LLMRouterProcess, answers, settings_env
from harness.redis_server import PrivateRedis, free_port
from worker.contract.keys import job_key
from worker.contract.settings import Settings

TOKEN = "bench-token"
SOURCE = "bench"
HOST = "127.0.0.1"
PROBE_EVERY_S = 0.25
PROBE_TIMEOUT_S = 5.0
POLL_LABELS = ('method="GET"', 'route="/v1/jobs/{job_id}"')


@dataclass
class Watch:
    """`/healthz` probes and RSS samples taken while a phase runs."""

    pid: int
    url: str
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    rss: list[float] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)  # a fresh connection a probe, as a kubelet's
        async with httpx.AsyncClient(base_url=self.url, timeout=PROBE_TIMEOUT_S, limits=limits) as http:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    ok = (await http.get("/healthz")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.latencies.append(time.perf_counter() - started)
                else:
                    self.failed += 1
                self.rss.append(rss_mb(self.pid))
                await asyncio.sleep(PROBE_EVERY_S)

    def line(self) -> str:
        if not self.latencies:
            return f"/healthz: {self.failed} probes, all failed"
        ms = sorted(x * 1000 for x in self.latencies)
        return (
            f"/healthz: {len(ms)} answered (p50 {statistics.median(ms):.1f} ms, max {ms[-1]:.0f} ms), "
            f"{self.failed} failed; RSS {self.rss[0]:.0f} MB at the start, {max(self.rss):.0f} MB at most"
        )


async def slow_client(port: int, stop: asyncio.Event, interval: float = 2.0) -> float | None:
    """One slowloris connection: seconds until the ingress closed it; None if it was still open
    at `stop` (or never opened: then NaN)."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return float("nan")
    opened = time.monotonic()
    try:
        writer.write(b"GET /v1/jobs HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
        while not stop.is_set():
            try:
                if not await asyncio.wait_for(reader.read(4096), interval):
                    return time.monotonic() - opened  # EOF: closed by the ingress
            except TimeoutError:
                writer.write(b"x")
                await writer.drain()
    except OSError:
        return time.monotonic() - opened
    finally:
        writer.close()
    return None


async def slowloris(port: int, watch: Watch, n: int, hold_s: float) -> str:
    stop, probing = asyncio.Event(), asyncio.Event()
    probe = asyncio.create_task(watch.run(probing))
    await asyncio.sleep(1)
    clients = [asyncio.create_task(slow_client(port, stop)) for _ in range(n)]
    await asyncio.sleep(hold_s)
    stop.set()
    closed = await asyncio.gather(*clients)
    probing.set()
    await probe
    failed = sum(1 for c in closed if c is not None and c != c)
    held = sum(1 for c in closed if c is None)
    times = sorted(c for c in closed if c is not None and c == c)
    when = f"closed after {statistics.median(times):.1f} s (median), {times[-1]:.1f} s at most" if times else ""
    return (
        f"(a) {n} slow connections held {hold_s:g} s: {len(times)} closed by the ingress {when}; "
        f"{held} still open at the end; {failed} not opened\n    {watch.line()}"
    )


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    """The ingress's request counter of the long-polls (`GET /v1/jobs/{job_id}`, any status), and
    its gauge of the waits it holds (0 before it had one)."""
    text = (await http.get("/metrics")).text
    ended = waiting = 0.0
    for line in text.splitlines():
        if line.startswith("llm_router_http_requests_total{") and all(label in line for label in POLL_LABELS):
            ended += float(line.rsplit(" ", 1)[1])
        elif line.startswith("llm_router_http_waiting "):
            waiting = float(line.rsplit(" ", 1)[1])
    return {"ended": ended, "waiting": waiting}


async def abandoned_polls(settings: Settings, port: int, watch: Watch, p: int) -> str:
    redis = Redis.from_url(settings.redis_url)
    ids = [f"{SOURCE}@poll-{i}" for i in range(p)]
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:  # pending jobs no worker takes (not in the queue)
            pipe.set(job_key(job_id), b"{}", ex=600)
        await pipe.execute()
    await redis.aclose()
    probing = asyncio.Event()
    probe = asyncio.create_task(watch.run(probing))
    async with httpx.AsyncClient(base_url=watch.url, timeout=10) as http:
        before = (await scrape(http))["ended"]
        writers = []
        for job_id in ids:
            try:
                _, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                continue
            head = f"GET /v1/jobs/{job_id}?wait=60 HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            writer.write(head.encode())
            writers.append(writer)
        await asyncio.sleep(5)  # the ingress reads them all (or refuses some)
        held = (await scrape(http))["waiting"] or len(writers)  # (no gauge: all, as before it had one)
        for writer in writers:
            writer.transport.abort()
        left = time.monotonic()
        while time.monotonic() - left < 75:
            now = await scrape(http)
            gone = now["ended"] - before
            if gone >= held and not now["waiting"]:
                break
            await asyncio.sleep(0.25)
        took = time.monotonic() - left
    probing.set()
    await probe
    outcome = f"all ended in {took:.1f} s" if gone >= held else f"{gone:.0f} ended within {took:.0f} s"
    return (
        f"(b) {len(writers)} long-polls (?wait=60) opened, {held:.0f} held by the ingress (the rest: 503 or "
        f"refused, past INGRESS_MAX_CONNECTIONS); after their clients left: {outcome}\n    {watch.line()}"
    )


FILE_BYTES = 8 * 1024 * 1024
READ_HOLD_S = 60.0


async def unread(port: int, path: str, stop: asyncio.Event) -> float | None:
    """One client that asks for `path` and reads none of the answer: seconds until the ingress cut it
    (seen once it reads, at `stop`, as the end of a partial answer), None if it was still open."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (HOST, port))
        await loop.sock_sendall(
            sock, f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        opened = time.monotonic()
        await stop.wait()
        got = 0
        while True:
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 2)
            except TimeoutError:
                return None  # still open: the answer goes on
            if not chunk:
                return (time.monotonic() - opened) if got < FILE_BYTES else None
            got += len(chunk)
    except OSError:
        return 0.0
    finally:
        sock.close()


async def slow_readers(port: int, watch: Watch, r: int) -> str:
    async with httpx.AsyncClient(base_url=watch.url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        upload = await http.post("/v1/files", data={"purpose": "batch"}, files={"file": b"x" * FILE_BYTES})
        file_id = upload.json()["id"]
        before = await closed_for(http, "send_timeout")
        stop, probing = asyncio.Event(), asyncio.Event()
        probe = asyncio.create_task(watch.run(probing))
        clients = [asyncio.create_task(unread(port, f"/v1/files/{file_id}/content", stop)) for _ in range(r)]
        started = time.monotonic()
        while time.monotonic() - started < READ_HOLD_S:
            if await closed_for(http, "send_timeout") - before >= r:
                break
            await asyncio.sleep(0.5)
        cut_after = time.monotonic() - started
        cut = await closed_for(http, "send_timeout") - before
        stop.set()
        await asyncio.gather(*clients)
        probing.set()
        await probe
    return (
        f"(c) {r} clients reading none of an 8 MiB answer: {cut:.0f} cut by the ingress (send_timeout) "
        f"within {cut_after:.1f} s, the rest held until the client left\n    {watch.line()}"
    )


async def closed_for(http: httpx.AsyncClient, reason: str) -> float:
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith(f'llm_router_http_connections_closed_total{{reason="{reason}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def huge_tools_body(size: int = 31_000_000, count: int = 100) -> bytes:
    """A chat job whose `tools` make it about `size` bytes: `count` functions (under MAX_TOOLS)
    with long schemas."""
    properties = {f"p{i}": {"type": "string", "description": "d" * 200} for i in range(size // count // 240)}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": properties}}}
    one = json.dumps(tool).encode()
    head = b'{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"tools":['
    return head + b",".join([one] * count) + b"]}"


async def huge_bodies(watch: Watch, h: int) -> str:
    body = huge_tools_body()
    probing = asyncio.Event()
    probe = asyncio.create_task(watch.run(probing))
    answers: list[tuple[int, float]] = []
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=watch.url, timeout=120, headers=headers) as http:
        for _ in range(h):
            started = time.perf_counter()
            answer = await http.post("/v1/jobs", content=body)
            answers.append((answer.status_code, time.perf_counter() - started))
            await asyncio.sleep(1)
    probing.set()
    await probe
    said = ", ".join(f"{status} in {took:.2f} s" for status, took in answers)
    return f"(d) {h} bodies of {len(body) / 1e6:.0f} MB of tools, one after the other: {said}\n    {watch.line()}"


async def run(
    slow: int, hold_s: float, polls: int, api_nofile: int, max_connections: int, readers: int, send_s: float, huge: int
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    mine = max(soft, min(hard, 2 * (slow + polls) + 1024))
    load = os.getloadavg()[0]
    with PrivateRedis() as redis:
        settings = Settings(
            aisa_api_key="unused",
            redis_url=redis.url,
            ingress_tokens={TOKEN: SOURCE},
            ingress_wait_s=60,
            _env_file=None,
            **({"ingress_max_connections": max_connections} if max_connections else {}),
            **({"ingress_send_timeout_s": send_s} if "ingress_send_timeout_s" in Settings.model_fields else {}),
        )
        port = free_port()
        url = f"http://{HOST}:{port}"
        if api_nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (api_nofile, hard))  # the ingress inherits it
        api = LLMRouterProcess("api", "--port", str(port), env=settings_env(settings), log_path=Path(os.devnull))
        resource.setrlimit(resource.RLIMIT_NOFILE, (mine, hard))
        try:
            api.wait_started(lambda: answers(f"{url}/healthz"), 30, "llm-router api")
            said = []
            if slow:
                said.append(await slowloris(port, Watch(api.proc.pid, url), slow, hold_s))
            if polls:
                said.append(await abandoned_polls(settings, port, Watch(api.proc.pid, url), polls))
            if readers:
                said.append(await slow_readers(port, Watch(api.proc.pid, url), readers))
            if huge:
                said.append(await huge_bodies(Watch(api.proc.pid, url), huge))
        finally:
            api.stop()
    nofile = f"ulimit -n {api_nofile or soft}"
    limit = f"INGRESS_MAX_CONNECTIONS={getattr(settings, 'ingress_max_connections', 'none')}"  # (none: older code)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  load {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        f"  ingress: {nofile}, {limit}"
    )
    print("\n".join(said))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=int, default=2000, help="slow (slowloris) connections")
    parser.add_argument("--hold", type=float, default=30, help="seconds the slow connections are kept up")
    parser.add_argument("--polls", type=int, default=2000, help="abandoned long-polls")
    parser.add_argument("--api-nofile", type=int, default=0, help="the ingress's file-descriptor limit (0: this one's)")
    parser.add_argument("--max-connections", type=int, default=0, help="INGRESS_MAX_CONNECTIONS (0: its default)")
    parser.add_argument("--readers", type=int, default=200, help="clients that read none of their answer")
    parser.add_argument("--send-timeout", type=float, default=10, help="INGRESS_SEND_TIMEOUT_S (default 60)")
    parser.add_argument("--huge", type=int, default=3, help="bodies of 31 MB of tools, one after the other")
    args = parser.parse_args()
    asyncio.run(
        run(
            args.slow,
            args.hold,
            args.polls,
            args.api_nofile,
            args.max_connections,
            args.readers,
            args.send_timeout,
            args.huge,
        )
    )


if __name__ == "__main__":
    main()
