"""`make demo` (`python -m harness.demo [--redis-url URL] [--output DIR] [--console]`): the whole
pipeline on the embedded default, then everything it started is stopped. Its files stay in
`--output` (default `demo-output/`, in the working directory) for the user to open: the batch's
prompts and results, the image it asked about, and the logs of the worker and the api (kept out
of the report). `--console` (`make demo-console`)
leaves the servers running and prints the operator console's URL and a token that opens it,
with the demo's jobs, batch and dead letter on it, until Ctrl-C.

Redis: a private redis-server, unless `--redis-url` names one (REDIS_URL is not read).
Gateway: the local AIsa simulator, always (the demo spends nothing). A worker process runs
`llm-router worker`; this process is the producer, then `llm-router api` takes one job over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import struct
import textwrap
import zlib
from contextlib import ExitStack
from pathlib import Path

import httpx

from producers.api import Producer
from sim.faults import Faults
from sim.server import SimServer, Simulator
from worker.contract.models import JobResult

from .processes import LLMRouterProcess, answers
from .redis_server import PrivateRedis, free_port

DEMO_KEY = "sim-demo-key"
QUEUE = "llm-router:demo"


def tiny_png(path: Path) -> Path:
    """A real 2x2 PNG, written without an imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def show(title: str, result: JobResult) -> None:
    print(f"\n### {title}  [{result.kind}, {result.status}]")
    if result.answers:
        for a in result.answers:
            text = a.content if a.status == "succeeded" else f"failed: {a.error.type}"  # type: ignore[union-attr]
            print(f"  {a.model:<18} {text}  (${a.cost or 0:.6f}, {a.latency_s or 0:.3f}s)")
    elif result.status == "succeeded":
        said = result.content if result.content is not None else json.dumps(result.tool_calls, indent=2)
        print(textwrap.indent(said, "  "))
    if len(result.attempts) > 1 and not result.answers:
        steps = [
            f"{a.model} {'ok' if a.ok else a.error.type if a.error else 'failed'}"
            + (f" (after {a.waited_s:.2f}s)" if a.waited_s else "")
            for a in result.attempts
        ]
        print("  attempts: " + " -> ".join(steps))
    if result.error:
        print(f"  error: {result.error.type}: {result.error.message}")
    ttft = f", first token after {result.ttft_s:.3f}s" if result.ttft_s else ""
    print(f"  cost ${result.cost or 0:.6f} ({result.cost_source}), {result.latency_s or 0:.3f}s{ttft}")


async def produce(redis_url: str, image: Path) -> None:
    async with Producer(redis_url, queue_name=QUEUE, source="demo") as producer:
        jobs = {
            "chat": await producer.chat(
                "gpt-4.1",
                "Explain quantum computing in simple terms.",
                system="You are a helpful assistant.",
                temperature=0.7,
                max_tokens=1000,
            ),
            "streamed chat": await producer.chat("claude-3-sonnet", "Write a poem about AI.", stream=True),
            "tool call": await producer.chat(
                "gpt-4.1",
                "What is the weather in Tokyo?",
                tools=[
                    {
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "parameters": {
                                "type": "object",
                                "properties": {"location": {"type": "string"}},
                                "required": ["location"],
                            },
                        },
                    }
                ],
            ),
            "vision (local file)": await producer.vision("gpt-4o", str(image), "What is in this image?"),
            "compare": await producer.compare(["gpt-4.1", "claude-3-sonnet", "gemini-2.0-flash"], "What is 2+2?"),
            "fallback: qwen-max is down": await producer.chat(
                "qwen-max", "Summarise the news.", fallbacks=["deepseek-v3"]
            ),
            "429 with Retry-After, honoured": await producer.chat("gemini-1.5-flash", "Hello again."),
            "unknown model (fails cleanly, dead-lettered)": await producer.chat("no-such-model", "Hello", fallbacks=[]),
        }
        for title, job_id in jobs.items():
            show(title, await producer.wait(job_id, timeout=60))
        spend = await producer.store.spend()
        print("\nAll-time spend in this Redis (llm-router:spend:total):")
        for model, usd in sorted(spend.items()):
            print(f"  {model:<18} ${usd:.6f}")
        print(f"Dead letters: {await producer.dead_letters.size()} (llm-router dlq list)")


PROMPTS = [
    "The quarterly report shows revenue up 12% on strong cloud sales.",
    "Minutes of the board meeting: the merger vote is postponed to May.",
    "Customer feedback: the new app is fast but the login page confuses people.",
    "Incident review: a cache misconfiguration caused 20 minutes of downtime.",
    "Research note: battery costs fell 14% year on year.",
    "Hiring update: three engineers joined the platform team this month.",
]


def run_batch(files: Path, env: dict[str, str]) -> None:
    """A small batch from a CSV of prompts, through the CLI as a user would run it: its live
    progress (a bar on a terminal, plain lines otherwise), then its results file (kept in `files`)."""
    prompts = files / "prompts.csv"
    prompts.write_text("id,text\n" + "".join(f'p{i},"{text}"\n' for i, text in enumerate(PROMPTS)))
    output = files / "summaries.jsonl"
    print(f"\n### batch: {len(PROMPTS)} prompts from a CSV, one result line each")
    print(
        "  $ llm-router batch submit --prompts prompts.csv --template 'Summarise: {text}' --model gpt-4o-mini "
        "--wait -o summaries.jsonl",
        flush=True,
    )
    submit = LLMRouterProcess(
        "batch",
        "submit",
        "--prompts",
        str(prompts),
        "--template",
        "Summarise: {text}",
        "--model",
        "gpt-4o-mini",
        "--wait",
        "-o",
        str(output),
        env=env,
    )
    if submit.wait(120) != 0:
        raise SystemExit("the demo batch failed")
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    for line in lines[:2]:
        body = line["response"]["body"]
        print(f"  {line['custom_id']}: {body['choices'][0]['message']['content']}  (${body['usage']['cost']:.6f})")
    print(f"  ... {len(lines)} lines in summaries.jsonl, in input order: open {output}")


def run_http(env: dict[str, str], files: Path, console: bool = False) -> None:
    """One job arriving over HTTP, as a service in any language would send it: `llm-router api`
    started with a token, the job POSTed, its result long-polled. `console`: the api (and, as
    the caller's stack stops them last, the worker and simulator) keep running until Ctrl-C."""
    port, token = free_port(), "demo-token"
    base = f"http://127.0.0.1:{port}"
    tokens: dict[str, object] = {token: "demo-http"}
    operator = secrets.token_urlsafe(16)
    if console:  # an operator token for the console; plain HTTP on loopback (no Secure cookie)
        tokens[operator] = {"role": "operator"}
        env = {**env, "CONSOLE_INSECURE_HTTP": "true"}
    api = LLMRouterProcess(
        "api", "--port", str(port), env={**env, "INGRESS_TOKENS": json.dumps(tokens)}, log_path=files / "api.log"
    )
    try:
        api.wait_started(lambda: answers(f"{base}/healthz"), 30, "llm-router api")
        print(f"\n### over HTTP: `llm-router api --port {port}` (INGRESS_TOKENS maps {token} to source demo-http)")
        job = {"kind": "chat", "model": "gpt-4.1", "messages": [{"role": "user", "content": "Hello from curl"}]}
        print(f"  $ curl {base}/v1/jobs -H 'Authorization: Bearer {token}' -H 'Idempotency-Key: hello-1' \\")
        print(f"      -H 'Content-Type: application/json' -d '{json.dumps(job)}'")
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "hello-1"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            queued = http.post("/v1/jobs", json=job)
            print(f"  {queued.status_code} {queued.text}")
            job_id = queued.json()["id"]
            print(f"  $ curl '{base}/v1/jobs/{job_id}?wait=30' -H 'Authorization: Bearer {token}'")
            result = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        print(f"  {result['status']}: {result['content']}  (source {result['source']}, ${result['cost']:.6f})")
        if console:
            wait_on_console(base, operator, token)
    finally:
        api.stop()


def wait_on_console(base: str, operator: str, source_token: str) -> None:
    """Print the console's URL and tokens, then hold the servers up until Ctrl-C."""
    print(f"\n### the operator console: {base}/console/")
    print(f"  sign in with the operator token {operator} (every source; replay the dead letter, run schedules)")
    print(f"  or the source token {source_token} (source demo-http only)")
    print("  the servers keep running: press Ctrl-C to stop them", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        print()


def show_metrics(port: int) -> None:
    """A few lines of the worker's /metrics: what Prometheus scrapes."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    lines = [
        line
        for line in text.splitlines()
        if line.startswith(("llm_router_spend_usd_total", "llm_router_fallbacks_total"))
    ]
    print(f"\nThe worker's metrics (http://127.0.0.1:{port}/metrics), e.g.:")
    for line in lines[:8]:
        print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", help="use this Redis instead of starting a private redis-server")
    parser.add_argument("--console", action="store_true", help="keep the servers up for the console until Ctrl-C")
    parser.add_argument(
        "--output", default="demo-output", help="where its files go (results, logs): default %(default)s/"
    )
    args = parser.parse_args()
    files = Path(args.output)
    files.mkdir(parents=True, exist_ok=True)
    for old in ("worker.log", "api.log"):  # this run's logs only
        (files / old).unlink(missing_ok=True)
    with ExitStack() as stack:
        redis_url = args.redis_url
        if redis_url is None:
            redis_url = stack.enter_context(PrivateRedis()).url
            print(f"started a private redis-server at {redis_url}")
        sim = stack.enter_context(
            SimServer(Simulator([DEMO_KEY], faults=Faults(latency_ms=30, latency_per_token_ms=2)))
        )
        sim.sim.faults.update("qwen-max", {"down": True})
        sim.sim.faults.update("gemini-1.5-flash", {"fail_next": [429], "retry_after_s": 0.5})
        print(f"AIsa simulator at {sim.base_url}; Redis at {redis_url}")
        metrics_port = free_port()
        env = {
            "AISA_API_KEY": DEMO_KEY,
            "AISA_BASE_URL": sim.base_url,
            "REDIS_URL": redis_url,
            "QUEUE_NAME": QUEUE,
            "LOG_LEVEL": "WARNING",
            "BACKOFF_BASE_S": "0.2",
            "METRICS_PORT": str(metrics_port),
        }
        worker = LLMRouterProcess("worker", env=env, log_path=files / "worker.log")
        stack.callback(worker.wait, 30)
        stack.callback(worker.send, signal.SIGTERM)
        asyncio.run(produce(redis_url, tiny_png(files / "red.png")))
        run_batch(files, env)
        if args.console:  # the console's wait last: the metrics are shown before it
            show_metrics(metrics_port)
            run_http(env, files, console=True)
        else:
            run_http(env, files)
            show_metrics(metrics_port)
    print(f"\nThe demo's files, in {files}/: prompts.csv and summaries.jsonl (the batch), red.png,")
    print("  worker.log and api.log (what the worker and the api logged, e.g. the dead letter)")
    print("\ndemo done: worker, simulator and any private Redis stopped")


if __name__ == "__main__":
    main()
